"""What the stack recorded of one benchmark run, as JSON (run inside the stack's network by
tests/test_stack.py: `compose run --rm cli python /app/docker/ci/check_run.py OUT`).

OUT is the run's --out URI. Reports, through the Prefect server's REST API with the
stack's basic-auth credentials: the covid-benchmark flow run with that --out (state), the
names of its task runs and of its subflows' task runs, its artifacts' keys; the status code
the API gives a client without credentials and one with a wrong password; the files under
OUT in the S3 store (s3fs, the stack's key).
"""

from __future__ import annotations

import base64
import json
import os
import sys
import urllib.error
import urllib.request

API = os.environ["PREFECT_API_URL"].rstrip("/")
AUTH = os.environ["PREFECT_API_AUTH_STRING"]


def post(path: str, body: dict, auth: str | None = AUTH) -> tuple[int, object]:
    req = urllib.request.Request(f"{API}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


def main(out: str) -> dict:
    status, runs = post("/flow_runs/filter", {"flows": {"name": {"any_": ["covid-benchmark"]}},
                                              "sort": "START_TIME_DESC", "limit": 200})
    if status != 200:
        raise SystemExit(f"{API}/flow_runs/filter answered {status} with the stack's "
                         "credentials")
    mine = [r for r in runs if r["parameters"].get("out") == out]
    report: dict = {"flow_runs": len(mine)}
    if len(mine) == 1:
        run = mine[0]
        _, subflows = post("/flow_runs/filter", {
            "flow_runs": {"parent_flow_run_id": {"any_": [run["id"]]}}})
        ids = [run["id"]] + [s["id"] for s in subflows]
        _, tasks = post("/task_runs/filter", {"flow_runs": {"id": {"any_": ids}},
                                              "limit": 200})
        _, artifacts = post("/artifacts/filter", {
            "artifacts": {"flow_run_id": {"any_": [run["id"]]}}})
        _, flows = post("/flows/filter", {"flows": {"id": {"any_": [
            s["flow_id"] for s in subflows]}}})
        flow_names = {f["id"]: f["name"] for f in flows}
        report.update(
            state=run["state_type"],
            subflows={flow_names[s["flow_id"]]: s["state_type"] for s in subflows},
            task_runs=sorted(t["name"] for t in tasks),
            task_states=sorted({t["state_type"] for t in tasks}),
            artifacts=sorted(a["key"] for a in artifacts if a["key"]))
    report["status_without_credentials"] = post("/flow_runs/filter", {}, None)[0]
    report["status_wrong_password"] = post("/flow_runs/filter", {},
                                           AUTH.split(":")[0] + ":wrong")[0]
    import s3fs

    fs = s3fs.S3FileSystem()
    report["files"] = sorted(fs.find(out))
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
