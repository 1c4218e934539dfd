"""BENCHMARKS.md's generated sections: each benchmark script rewrites the text between its own markers."""
import json
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


def publish(name, measured, text, markers, heading):
    """A benchmark's results: benchmarks/results/NAME.json (``measured``) and NAME.md (``text``), and its
    BENCHMARKS.md section (write_section); ``text`` is printed too."""
    results = os.path.join(ROOT, "benchmarks", "results")
    os.makedirs(results, exist_ok=True)
    with open(os.path.join(results, f"{name}.json"), "w", encoding="utf-8") as f:
        json.dump(measured, f, indent=2)
    with open(os.path.join(results, f"{name}.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    write_section(text, markers, heading)
    print(text)
