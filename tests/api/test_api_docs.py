"""The example in docs/api.md runs as written, with the openai SDK against Daphne."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

from tests.support import ROOT, child_env, test_database_url


def test_the_docs_example_runs(daphne_server: Any, api_key: str) -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    example = text.split("### Example", 1)[1]
    code = re.search(r"```python\n(.*?)```", example, re.S)
    assert code is not None
    env = child_env(database_url=test_database_url(), AGENTIDE_URL=daphne_server.url,
                    AGENTIDE_API_KEY=api_key)
    result = subprocess.run([sys.executable, "-c", code.group(1)], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "/workspace/data.csv" in result.stdout
    assert "['report']" in result.stdout
