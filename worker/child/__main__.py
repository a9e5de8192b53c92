"""The one child entry point: `python -m worker.child train JOB_ID ATTEMPT`, `... compare COMPARISON_ID` or
`... merge MERGED_MODEL_ID ATTEMPT`, spawned by worker.tasks.supervise.spawn_child; or `... standby`, started ahead
of its task, which reads one of those command lines from stdin and becomes that child (worker/child/standby.py)."""

from __future__ import annotations

import sys

USAGE = (
    "usage: python -m worker.child train JOB_ID ATTEMPT | compare COMPARISON_ID | merge MERGED_MODEL_ID ATTEMPT"
    " | standby"
)


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "train":
        from worker.child.recipe import main as train_main

        return train_main(argv[1:])
    if len(argv) == 2 and argv[0] == "compare":
        from worker.child.comparison import main as compare_main

        return compare_main(argv[1:])
    if len(argv) == 3 and argv[0] == "merge":
        from worker.child.merge import main as merge_main

        return merge_main(argv[1:])
    if argv == ["standby"]:
        from worker.child.standby import main as standby_main

        return standby_main()
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
