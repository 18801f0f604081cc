"""Balancing and patient-grouped stratified folds."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from covid_pipeline.balance import balance
from covid_pipeline.errors import DataError
from covid_pipeline.folds import assign_folds
from covid_pipeline.manifest import LABEL_NAMES


def manifest(n_pos_patients=30, per_patient=3, n_neg=40, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_pos_patients):
        for k in range(int(rng.integers(1, per_patient + 1))):
            rows.append({"image_id": f"c{p}-{k}", "patient_id": f"p{p}", "label": 1})
    for i in range(n_neg):
        rows.append({"image_id": f"n{i}", "patient_id": f"n{i}", "label": 0})
    df = pd.DataFrame(rows)
    df["label_name"] = df["label"].map(LABEL_NAMES)
    return df


def test_undersample_keeps_equal_counts_seeded_and_reports_dropped():
    df = manifest()
    n_pos = int((df.label == 1).sum())
    out, rep = balance(df, "undersample", seed=3)
    assert rep.kept == {"normal": 40, "COVID-19": 40}
    assert rep.dropped == {"normal": 0, "COVID-19": n_pos - 40}
    again, _ = balance(df.sample(frac=1, random_state=1), "undersample", seed=3)
    assert list(out.image_id) == list(again.image_id)
    other, _ = balance(df, "undersample", seed=4)
    assert list(out.image_id) != list(other.image_id)


def images(label: int, count: int, start: int = 0) -> pd.DataFrame:
    ids = [f"{label}-{i}" for i in range(start, start + count)]
    return pd.DataFrame({"image_id": ids, "patient_id": ids, "label": label,
                         "label_name": LABEL_NAMES[label],
                         "sha256": [hashlib.sha256(i.encode()).hexdigest() for i in ids]})


def kept(df: pd.DataFrame, seed: int) -> dict[int, set[str]]:
    out, _ = balance(df, "undersample", seed=seed)
    return {c: set(out[out.label == c].image_id) for c in (0, 1)}


@settings(max_examples=200, deadline=None)
@given(n_pos=st.integers(1, 40), n_neg=st.integers(1, 40), added=st.integers(0, 12),
       to=st.sampled_from([0, 1]), seed=st.integers(0, 2**32 - 1))
def test_adding_k_images_changes_at_most_k_kept_images_and_a_larger_n_only_adds(
        n_pos, n_neg, added, to, seed):
    before = pd.concat([images(1, n_pos), images(0, n_neg)], ignore_index=True)
    after = pd.concat([before, images(to, added, start=100)], ignore_index=True)
    old, new = kept(before, seed), kept(after, seed)
    n_old, n_new = min(n_pos, n_neg), min(n_pos + added * to, n_neg + added * (1 - to))
    for c in (0, 1):
        k = added if c == to else 0
        assert len(old[c] - new[c]) <= k  # at most k of the kept images leave
        assert len(new[c] - old[c]) <= k + (n_new - n_old)  # the rest: what a larger n adds
        if k == 0:  # a class that got nothing keeps every kept image: n only grows
            assert old[c] <= new[c]


def test_undersampling_depends_on_content_not_row_position():
    df = pd.concat([images(1, 30), images(0, 10)], ignore_index=True)
    renamed = df.assign(image_id=[f"x{i}" for i in range(len(df))],
                        patient_id=[f"x{i}" for i in range(len(df))])
    a, _ = balance(df, "undersample", seed=7)
    b, _ = balance(renamed, "undersample", seed=7)
    assert sorted(a.sha256) == sorted(b.sha256)  # the same images, whatever their ids


def test_none_and_class_weight_keep_everything():
    df = manifest()
    out, rep = balance(df, "none")
    assert len(out) == len(df) and rep.class_weight is None
    out, rep = balance(df, "class-weight")
    n0, n1 = (df.label == 0).sum(), (df.label == 1).sum()
    assert rep.class_weight[0] == pytest.approx(len(df) / (2 * n0))
    assert rep.class_weight[1] == pytest.approx(len(df) / (2 * n1))


def test_one_class_only_is_a_clear_error():
    df = manifest()
    with pytest.raises(DataError, match="no normal images"):
        balance(df[df.label == 1])


@pytest.mark.parametrize("seed", range(5))
def test_patient_grouped_folds_never_share_a_patient_and_are_stratified(seed):
    df = manifest(seed=seed)
    out = assign_folds(df, 5, "patient", seed)
    assert out.groupby("patient_id")["fold"].nunique().max() == 1
    assert sorted(out["fold"].unique()) == [0, 1, 2, 3, 4]
    for _, part in out.groupby("fold"):
        assert set(part["label"]) == {0, 1}


def test_image_level_folds_reproduce_the_study_and_leak_patients():
    df = manifest(per_patient=5)
    out = assign_folds(df, 5, "none", 0)
    counts = out.groupby("fold").size()
    assert counts.max() - counts.min() <= 1
    assert out.groupby("patient_id")["fold"].nunique().max() > 1


def test_folds_are_deterministic():
    df = manifest()
    a = assign_folds(df, 5, "patient", 7)
    b = assign_folds(df.sample(frac=1, random_state=2), 5, "patient", 7)
    assert a.set_index("image_id")["fold"].equals(b.set_index("image_id")["fold"])


def test_fewer_patients_than_folds_fails_clearly():
    df = manifest(n_pos_patients=3, per_patient=4)
    with pytest.raises(DataError, match="COVID-19 has 3 patients, fewer than --folds 5"):
        assign_folds(df, 5, "patient")


def test_reencoded_and_resized_copies_of_one_radiograph_share_a_fold(shared_data):
    """A JPEG re-encoding and a 0.9x resize of one real radiograph, filed under other
    patients (as happens in ieee8023), land in the fold of the original, whatever the seed;
    the other radiographs stay apart."""
    import io

    from PIL import Image

    from covid_pipeline import imaging
    from covid_pipeline.folds import assign_folds, fold_groups, near_duplicates

    files = sorted((shared_data / "ieee8023-2020-04" / "images").glob("*.jp*g"))[:12]
    files += sorted((shared_data / "rsna-pneumonia-format" / "stage_2_train_images").glob(
        "*.dcm"))[:12]
    originals = [imaging.decode(f.read_bytes()).pixels for f in files]

    def copy(px, kind):
        img, buf = Image.fromarray(px), io.BytesIO()
        if kind == "jpeg":
            img.save(buf, format="JPEG", quality=60)
        else:
            img.resize((int(px.shape[1] * 0.9), int(px.shape[0] * 0.9))).save(buf, format="PNG")
        return imaging.decode(buf.getvalue()).pixels

    rows = [{"image_id": f"img{i}", "patient_id": f"p{i}", "label": int(i < 12),
             "phash": imaging.phash(px)} for i, px in enumerate(originals)]
    rows += [{"image_id": "copy-jpeg", "patient_id": "other-1", "label": 1,
              "phash": imaging.phash(copy(originals[0], "jpeg"))},
             {"image_id": "copy-resized", "patient_id": "other-2", "label": 1,
              "phash": imaging.phash(copy(originals[0], "resize"))}]
    df = pd.DataFrame(rows)
    groups = fold_groups(df)
    assert len({groups[0], groups[-2], groups[-1]}) == 1
    assert len(set(groups[:24])) >= 23  # other radiographs apart (two may be real copies)
    assert near_duplicates(df)["images"] >= 3
    for seed in range(5):
        folds = assign_folds(df, n_folds=3, seed=seed).set_index("image_id")["fold"]
        assert folds["copy-jpeg"] == folds["copy-resized"] == folds["img0"]
