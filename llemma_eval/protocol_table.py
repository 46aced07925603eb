"""The table in docs/evaluation.md comparing the two scoring protocols on the sample set shipped
with the tests (tests/fixtures/protocol_samples.jsonl: invented problems, hand-written
generations chosen to show where the protocols differ).

    python -m llemma_eval.protocol_table     # prints the table (tests check docs/evaluation.md holds it)
"""

import json
import os
import sys

from llemma_eval.scoring import score_records, summarize
from neox.paths import project_root

FIXTURE = os.path.join("tests", "fixtures", "protocol_samples.jsonl")


def protocol_table(summaries: dict) -> str:
    lines = ["| sample set | n | k | metric | default | llemma | invalid (default / llemma) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for task, s in summaries.items():
        d, m = s["protocols"]["default"], s["protocols"]["llemma"]
        lines.append(f"| {task} | {s['n']} | {s['k']} | {s['metric']} | {100 * d['value']:.1f} | {100 * m['value']:.1f} "
                     f"| {100 * d['metrics']['invalid']:.1f}% / {100 * m['metrics']['invalid']:.1f}% |")
    return "\n".join(lines)


def main() -> int:

    by_task: dict = {}
    with open(os.path.join(project_root(), FIXTURE)) as f:
        for line in f:
            r = json.loads(line)
            by_task.setdefault(r["task"], []).append(r)
    print(protocol_table({t: summarize(score_records(rs, workers=2, timeout=20)) for t, rs in by_task.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
