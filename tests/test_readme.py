"""The README's Python blocks run as written (a hand copy would drift)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        code = block.replace("/tmp/dpfedlora-readme-ledger.jsonl", str(tmp_path / "ledger.jsonl"))
        exec(compile(code, str(README), "exec"), {})
    out = capsys.readouterr().out.splitlines()
    # the value the README's comment promises is the one printed
    promised = re.search(r"# (\d\.\d+): 1000 steps in all", README.read_text()).group(1)
    assert out[0] == promised == "1.828"
    client, current, planned = out[1].split()
    assert client == "client-0" and float(current) <= 3.0 < float(planned)


def test_readme_shows_the_two_commands_first():
    first_screen = "\n".join(README.read_text().splitlines()[:20])
    assert "make test" in first_screen and "make demo" in first_screen
