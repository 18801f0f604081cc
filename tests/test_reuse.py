"""Which stored fold results a run trusts."""

from __future__ import annotations

from covid_pipeline import storage
from covid_pipeline.training import reusable


def test_a_fold_result_is_reused_only_under_its_key_and_with_its_head(tmp_path):
    key = {"format": 2, "dataset_version": "v", "fold": 0}
    uri, head = str(tmp_path / "fold-0.json"), str(tmp_path / "fold-0.head.npz")
    assert reusable(uri, key) is None  # nothing stored
    storage.write_json(uri, {**key, "status": "ok", "metrics": {}})
    assert reusable(uri, key)["reused"] is True
    assert reusable(uri, {**key, "dataset_version": "w"}) is None
    assert reusable(uri, key, head_uri=head) is None  # made before heads were kept
    storage.write_bytes(head, b"npz")
    assert reusable(uri, key, head_uri=head)["reused"] is True
    storage.write_json(uri, {**key, "status": "failed"})
    assert reusable(uri, key, head_uri=head) is None
