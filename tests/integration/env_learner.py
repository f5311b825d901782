"""A learner entrypoint that writes the environment it was started with to `<output-dir>/env.json`."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", required=True)
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args()
    Path(args.output_dir, "env.json").write_text(json.dumps(dict(os.environ)))
