"""BENCHMARKS.md's generated sections: each benchmark script rewrites the text between its own markers."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_section(text, markers, heading):
    """Put ``text`` (which starts and ends with ``markers``) in BENCHMARKS.md in place of the text
    between them, or at its end under ``heading`` the first time."""
    path = os.path.join(ROOT, "BENCHMARKS.md")
    with open(path, encoding="utf-8") as f:
        content = f.read()
    if markers[0] in content:
        before, rest = content.split(markers[0], 1)
        content = before + text + rest.split(markers[1], 1)[1]
    else:
        content += f"\n## {heading}\n\n" + text + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(content)
