"""The Milvus backend on milvus-lite: the same answers as FAISS through the same interface."""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from test_index import DIM, make_cases

from monai_cir.index import (
    DuplicateCaseError,
    FingerprintMismatchError,
    create_index,
    load_index,
)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("milvus")
    x, meta = make_cases(200, seed=11)
    milvus = create_index(DIM, "fp-m", backend="milvus", uri=str(root / "ix" / "milvus.db"), collection="cases")
    milvus.add(x, meta)
    faiss_index = create_index(DIM, "fp-m")
    faiss_index.add(x, meta)
    yield milvus, faiss_index, root
    # stop the embedded server while logging still works (milvus-lite otherwise logs from atexit
    # after pytest has closed its streams)
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_all()


def _ids(results):
    return [[h.case_id for h in row] for row in results]


def test_milvus_and_faiss_return_the_same_top_k(pair):
    milvus, faiss_index, _ = pair
    assert len(milvus) == len(faiss_index) == 200
    q = make_cases(5, seed=12)[0]
    for filters in (None, {"site": "trunk"}, {"diagnosis": "melanoma", "site": ["face", "acral"]}, {"age": [21, 25, 29]}, {"study_uid": "1.2.3.7"}):
        m, f = milvus.search(q, 8, filters), faiss_index.search(q, 8, filters)
        assert _ids(m) == _ids(f), filters
        for mrow, frow in zip(m, f):
            assert [h.score for h in mrow] == pytest.approx([h.score for h in frow], abs=1e-4)
            assert [h.metadata for h in mrow] == [h.metadata for h in frow]


def test_milvus_add_update_remove(pair):
    milvus, _, _ = pair
    x, meta = make_cases(2, seed=13, prefix="extra")
    milvus.add(x, meta)
    with pytest.raises(DuplicateCaseError, match="update=True"):
        milvus.add(x[:1], meta[:1])
    meta[0] = dataclasses.replace(meta[0], diagnosis="benign keratosis")
    milvus.add(x[:1], meta[:1], update=True)
    assert milvus.get("extra0").diagnosis == "benign keratosis" and len(milvus) == 202
    assert milvus.search(x[0], 1)[0][0].case_id == "extra0"
    assert milvus.remove(["extra0", "extra1"]) == 2
    assert "extra0" not in milvus and len(milvus) == 200
    with pytest.raises(KeyError):
        milvus.remove(["extra0"])


def test_milvus_save_load_and_fingerprint(pair):
    milvus, _, root = pair
    q = make_cases(2, seed=14)[0]
    milvus.save(root / "ix")
    loaded = load_index(root / "ix", expected_fingerprint="fp-m")
    assert loaded.backend == "milvus" and len(loaded) == 200
    assert _ids(loaded.search(q, 5)) == _ids(milvus.search(q, 5))
    with pytest.raises(FingerprintMismatchError, match="monai-cir index build"):
        load_index(root / "ix", expected_fingerprint="other")
    with pytest.raises(FingerprintMismatchError, match="another model"):
        create_index(DIM, "other", backend="milvus", uri=str(root / "ix" / "milvus.db"), collection="cases")


def test_an_index_saved_by_one_process_is_searched_and_changed_by_another(tmp_path):
    """Found by review: `index build --backend milvus` said "indexed", then every later command (search, info, remove:
    another process) failed with "Collection ... is in state 'released'; call load()" (milvus-lite 3)."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "step.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_index import DIM, make_cases\n"
        "from monai_cir.index import create_index, load_index\n"
        "folder = sys.argv[2]\n"
        "if sys.argv[1] == 'build':\n"
        "    index = create_index(DIM, 'fp-m', backend='milvus', uri=folder + '/milvus.db', collection='cases')\n"
        "    x, meta = make_cases(20, seed=11)\n"
        "    index.add(x, meta)\n"
        "    index.save(folder)\n"
        "else:\n"
        "    index = load_index(folder, expected_fingerprint='fp-m')\n"
        "    print(len(index), index.search(make_cases(20, seed=11)[0][3], 1)[0][0].case_id, index.remove(['c0']), len(index))\n")

    def step(name: str) -> str:
        run = subprocess.run([sys.executable, str(script), name, str(tmp_path / "ix")], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        return run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""

    step("build")
    assert step("search") == "20 c3 1 19"
