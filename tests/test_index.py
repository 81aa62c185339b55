"""The FAISS case index: search, filters, add/update/remove, atomic checksummed persistence."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from monai_cir.index import (
    MANIFEST_NAME,
    CaseMetadata,
    DuplicateCaseError,
    FaissCaseIndex,
    FingerprintMismatchError,
    IndexIntegrityError,
    create_index,
    load_index,
)
from monai_cir.index import base as index_base

DIM = 16
SITES = ("trunk", "face", "acral", "unknown")


def make_cases(n: int, seed: int = 0, prefix: str = "c", rank: int | None = None) -> tuple[np.ndarray, list[CaseMetadata]]:
    """Unit vectors (rank ``rank`` when given: then a projection to >= rank dimensions loses nothing)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, rank or DIM)).astype(np.float32)
    if rank is not None:
        x = x @ rng.standard_normal((rank, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    meta = [
        CaseMetadata(f"{prefix}{i}", ("melanoma", "nevus")[i % 2], "synthetic", site=SITES[i % len(SITES)], study_uid=f"1.2.3.{i}", extra={"age": 20 + i % 50})
        for i in range(n)
    ]
    return x, meta


def brute_force(x: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    return list(np.argsort(-(x @ q), kind="stable")[:k])


@pytest.fixture()
def index() -> FaissCaseIndex:
    x, meta = make_cases(300)
    ix = create_index(DIM, "fp-a")
    ix.add(x, meta)
    return ix


def hits_key(results):
    return [[(h.rank, h.case_id, h.score) for h in row] for row in results]


def test_exact_search_matches_brute_force(index):
    x = index.vectors()
    q = make_cases(5, seed=1)[0]
    results = index.search(q, k=7)
    assert len(results) == 5
    for row, qi in zip(results, q):
        assert [h.case_id for h in row] == [f"c{i}" for i in brute_force(x, qi, 7)]
        assert [h.rank for h in row] == list(range(1, 8))
        assert row[0].score == pytest.approx(float(x[int(row[0].case_id[1:])] @ qi), abs=1e-5)
    single = index.search(q[0], k=3)  # a 1-D query is a batch of one
    assert [h.case_id for h in single[0]] == [h.case_id for h in results[0][:3]]


def test_filtered_search_returns_only_matching_cases(index):
    q = make_cases(4, seed=2)[0]
    for filters in ({"site": "trunk"}, {"diagnosis": "melanoma", "site": ["face", "acral"]}, {"age": 21}):
        for row in index.search(q, k=20, filters=filters):
            assert row, filters
            for hit in row:
                for key, value in filters.items():
                    allowed = value if isinstance(value, list) else [value]
                    assert hit.metadata.value(key) in allowed
    # the filtered top-k is the exact top-k of the matching subset
    x = index.vectors()
    subset = [i for i in range(len(index)) if SITES[i % len(SITES)] == "trunk"]
    expected = [f"c{subset[j]}" for j in brute_force(x[subset], q[0], 10)]
    assert [h.case_id for h in index.search(q[0], 10, filters={"site": "trunk"})[0]] == expected
    assert index.search(q, k=5, filters={"site": "nowhere"}) == [[], [], [], []]
    assert len(index.search(q[0], k=500, filters={"site": "face"})[0]) == 75  # fewer than k only when fewer match


def test_a_filter_sees_every_add_update_and_remove(index):
    """The rows a filter selects are kept between searches (a query the diagnosis prior orders searches once per
    diagnosis) and must follow every change of the library."""
    q = make_cases(1, seed=5)[0][0]
    before = index.search(q, k=300, filters={"site": "trunk"})[0]
    assert len(before) == 75
    index.add(q[None], [CaseMetadata("added", "nevus", "synthetic", site="trunk")])
    after_add = index.search(q, k=300, filters={"site": "trunk"})[0]
    assert len(after_add) == 76 and after_add[0].case_id == "added"
    index.add(q[None], [CaseMetadata("added", "nevus", "synthetic", site="face")], update=True)  # moved to another site
    assert "added" not in {h.case_id for h in index.search(q, k=300, filters={"site": "trunk"})[0]}
    assert index.search(q, k=1, filters={"site": "face"})[0][0].case_id == "added"
    gone = before[0].case_id
    index.remove([gone])
    after_remove = index.search(q, k=300, filters={"site": "trunk"})[0]
    assert len(after_remove) == 74 and gone not in {h.case_id for h in after_remove}
    assert all(h.metadata.site == "trunk" for h in after_remove)  # rows shifted by the removal: the filter follows


def test_a_stored_case_cannot_change_behind_the_filters(index):
    """The filters and ``info`` are cached from the cases' metadata: a case changed in place (its diagnosis, a key
    of ``extra``) would be filtered by its old values, so metadata is read-only and a change goes through
    ``add(update=True)``; a read-only case still pickles (the app's workers) and round-trips through JSON."""
    import dataclasses
    import pickle

    stored = index.get("c0")
    with pytest.raises(dataclasses.FrozenInstanceError):
        stored.diagnosis = "nevus"
    with pytest.raises(TypeError, match="read-only"):
        stored.extra["age"] = 99
    with pytest.raises(TypeError, match="read-only"):
        stored.extra.update(age=99)
    assert index.search(index.vectors()[0], k=300, filters={"age": 20})[0][0].case_id == "c0"
    changed = dataclasses.replace(stored, diagnosis="nevus", extra={"age": 99})
    index.add(index.vectors()[:1], [changed], update=True)
    assert "c0" not in {h.case_id for h in index.search(index.vectors()[0], k=300, filters={"age": 20})[0]}
    assert index.search(index.vectors()[0], k=1, filters={"age": 99})[0][0].case_id == "c0"
    assert index.info()["diagnosis"] == {"melanoma": 149, "nevus": 151}
    copied = pickle.loads(pickle.dumps(changed))
    assert copied == changed and dict(copied.extra) == {"age": 99}
    assert CaseMetadata.from_dict(json.loads(json.dumps(changed.to_dict()))) == changed


def test_info_counts_as_a_pass_over_the_cases(index):
    """FAISS answers ``info`` from its metadata columns (the app reads the diagnoses per query): the same counts as
    the generic pass over every case, also after a change and for a case without a site."""
    index.add(make_cases(1, seed=6)[0], [CaseMetadata("no-site", "seborrheic keratosis", "other collection")])
    index.remove(["c3"])
    info = index.info()
    assert info == index_base.CaseIndex.info(index)
    assert info["diagnosis"] == {"melanoma": 150, "nevus": 149, "seborrheic keratosis": 1} and info["cases"] == 300


def test_approximate_index_recall_and_filters():
    x, meta = make_cases(3000, seed=3, rank=8)
    ix = FaissCaseIndex(DIM, "fp", exact_max=500, ann_dim=8, nprobe=16)
    ix.add(x, meta)
    q = x[:20] + 0.01
    results = ix.search(q, k=10)
    assert ix.uses_ann and ix._ann is not None
    recall = np.mean([len({h.case_id for h in row} & {f"c{i}" for i in brute_force(x, qi, 10)}) / 10 for row, qi in zip(results, q)])
    assert recall >= 0.9
    assert all(row[0].case_id == f"c{i}" for i, row in enumerate(results))  # itself first (exact re-ranking)
    # a very selective filter: the probed lists hold too few matches, so it falls back to exact over the subset
    ids = {"c5", "c1234", "c2999"}
    row = ix.search(q[0], k=3, filters={"case_id": sorted(ids)})[0]
    assert {h.case_id for h in row} == ids
    for row in ix.search(q, k=10, filters={"site": "acral"}):
        assert len(row) == 10 and all(h.metadata.site == "acral" for h in row)


def test_approximate_filtered_search_finds_a_far_diagnosis():
    """The diagnosis prior searches each diagnosis on its own; for a query in nevus clusters the closest melanomas
    lie in lists far from it. The filtered search probes more lists (FILTERED_PROBE_FACTOR x nprobe / share) and finds
    them as exact search does (with nprobe / share lists: 92% of them, some queries none)."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, 8)).astype(np.float32)
    cluster = rng.integers(0, 40, 4000)
    x = (centres[cluster] + 0.35 * rng.standard_normal((4000, 8)).astype(np.float32)) @ rng.standard_normal((8, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    diagnosis = np.where(cluster < 12, "melanoma", "nevus")  # 30% melanoma, in clusters of their own
    ix = FaissCaseIndex(DIM, "fp", exact_max=500, ann_dim=8, nprobe=4)
    ix.add(x, [CaseMetadata(f"c{i}", str(d), "synthetic") for i, d in enumerate(diagnosis)])
    melanomas = np.flatnonzero(diagnosis == "melanoma")
    recall = []
    for q in x[diagnosis == "nevus"][:100] + 0.01:
        exact = {f"c{melanomas[j]}" for j in np.argsort(-(x[melanomas] @ q))[:10]}
        found = {h.case_id for h in ix.search(q, 10, filters={"diagnosis": "melanoma"})[0]}
        recall.append(len(exact & found) / 10)
    assert ix.uses_ann and np.mean(recall) >= 0.99 and min(recall) >= 0.8, (np.mean(recall), min(recall))


def test_duplicate_id_is_an_error_and_update_replaces(index):
    x, meta = make_cases(3, seed=9)
    with pytest.raises(DuplicateCaseError, match="update=True"):
        index.add(x[:1], [meta[0]])  # c0 exists
    with pytest.raises(DuplicateCaseError, match="repeat"):
        index.add(x[:2], [CaseMetadata("new", "nevus", "s"), CaseMetadata("new", "nevus", "s")])
    assert len(index) == 300
    replacement = CaseMetadata("c0", "benign keratosis", "synthetic", site="face")
    index.add(x[:1], [replacement], update=True)
    assert len(index) == 300 and index.get("c0").diagnosis == "benign keratosis"
    hit = index.search(x[0], k=1)[0][0]
    assert hit.case_id == "c0" and hit.score == pytest.approx(1.0, abs=1e-5)


def test_remove(index):
    q = index.vectors()[10].copy()
    assert index.search(q, 1)[0][0].case_id == "c10"
    assert index.remove(["c10", "c11"]) == 2
    assert len(index) == 298 and "c10" not in index and "c12" in index
    assert all(h.case_id not in ("c10", "c11") for h in index.search(q, 50)[0])
    assert index.search(index.vectors()[index._rows["c12"]], 1)[0][0].case_id == "c12"  # rows still line up
    with pytest.raises(KeyError, match="c10"):
        index.remove(["c10"])


def test_remove_with_approximate_index_refills_it():
    x, meta = make_cases(2000, seed=4)
    ix = FaissCaseIndex(DIM, "fp", exact_max=100, ann_dim=8, nprobe=64)
    ix.add(x, meta)
    assert ix.search(x[7], 1)[0][0].case_id == "c7"
    ix.remove(["c7"])
    assert ix.search(x[7], 5)[0][0].case_id != "c7"
    assert ix.search(x[8], 1)[0][0].case_id == "c8"


def test_bad_inputs(index):
    with pytest.raises(ValueError, match=r"shape \(N, 16\)"):
        index.add(np.zeros((2, 5), np.float32), [CaseMetadata("a", "nevus", "s"), CaseMetadata("b", "nevus", "s")])
    with pytest.raises(ValueError, match="one per case"):
        index.add(np.zeros((2, DIM), np.float32), [CaseMetadata("a", "nevus", "s")])
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full(DIM, np.nan, np.float32))
    with pytest.raises(ValueError, match="k must be"):
        index.search(np.zeros(DIM, np.float32), k=0)
    with pytest.raises(ValueError, match="non-empty"):
        CaseMetadata("", "nevus", "s")


def test_save_load_round_trip_bit_for_bit(index, tmp_path):
    q = make_cases(6, seed=5)[0]
    before = hits_key(index.search(q, 10))
    before_filtered = hits_key(index.search(q, 10, filters={"site": "face"}))
    index.save(tmp_path / "ix")
    loaded = load_index(tmp_path / "ix", expected_fingerprint="fp-a")
    assert isinstance(loaded, FaissCaseIndex) and len(loaded) == 300 and loaded.dim == DIM
    assert np.array_equal(loaded.vectors(), index.vectors())
    assert hits_key(loaded.search(q, 10)) == before
    assert hits_key(loaded.search(q, 10, filters={"site": "face"})) == before_filtered
    assert loaded.get("c3") == index.get("c3")
    # saving again replaces the generation and leaves no stray files
    loaded.remove(["c0"])
    loaded.save(tmp_path / "ix")
    names = sorted(os.listdir(tmp_path / "ix"))
    assert len(names) == 3 and MANIFEST_NAME in names
    assert len(load_index(tmp_path / "ix")) == 299


def test_round_trip_with_approximate_index(tmp_path):
    x, meta = make_cases(2000, seed=6)
    ix = FaissCaseIndex(DIM, "fp", exact_max=100, ann_dim=8)
    ix.add(x, meta)
    q = x[:5] + 0.05
    before = hits_key(ix.search(q, 10))
    ix.save(tmp_path / "ix")
    assert any(n.startswith("ann-") for n in os.listdir(tmp_path / "ix"))
    assert hits_key(load_index(tmp_path / "ix").search(q, 10)) == before


def test_failed_save_leaves_previous_index_intact(index, tmp_path, monkeypatch):
    target = tmp_path / "ix"
    index.save(target)
    q = make_cases(3, seed=7)[0]
    expected = hits_key(index.search(q, 5))
    files_before = sorted(os.listdir(target))
    index.remove([f"c{i}" for i in range(100)])
    real_replace = os.replace
    for fail_on in ("cases-", MANIFEST_NAME):  # killed while writing data files / at the commit rename

        def failing_replace(src, dst, fail_on=fail_on):
            if os.path.basename(str(dst)).startswith(fail_on):
                raise OSError("simulated crash")
            return real_replace(src, dst)

        monkeypatch.setattr(index_base.os, "replace", failing_replace)
        with pytest.raises(OSError, match="simulated crash"):
            index.save(target)
        monkeypatch.setattr(index_base.os, "replace", real_replace)
        assert sorted(os.listdir(target)) == files_before  # the partial generation was cleaned up
        reopened = load_index(target, expected_fingerprint="fp-a")
        assert len(reopened) == 300 and hits_key(reopened.search(q, 5)) == expected


def test_crash_leftovers_do_not_break_load(index, tmp_path):
    target = tmp_path / "ix"
    index.save(target)
    (target / ".vectors-deadbeef.faiss.tmp").write_bytes(b"half written")  # as a killed process leaves it
    (target / "vectors-deadbeef0000.faiss").write_bytes(b"renamed but never committed")
    assert len(load_index(target)) == 300
    index.save(target)  # the next save clears them
    assert not any("deadbeef" in n for n in os.listdir(target))


def _data_file(directory, role):
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    return directory / manifest["files"][role]["name"]


@pytest.mark.parametrize("role", ["vectors", "cases"])
def test_corrupted_file_is_detected(index, tmp_path, role):
    index.save(tmp_path / "ix")
    path = _data_file(tmp_path / "ix", role)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexIntegrityError, match="checksum mismatch"):
        load_index(tmp_path / "ix")


def test_sha256_file_is_the_one_file_checksum(tmp_path):
    """The index, the encoder artifact and the demo's stamp hash files with one function, whole files
    read a chunk at a time (here 8 bytes: empty, shorter, exactly one and several chunks)."""
    import hashlib

    from monai_cir.atomic import sha256_file
    from monai_cir.networks import scripted

    data = os.urandom(20)
    for n in (0, 7, 8, 9, 20):
        (tmp_path / "f").write_bytes(data[:n])
        assert sha256_file(tmp_path / "f", chunk=8) == hashlib.sha256(data[:n]).hexdigest(), n
    assert index_base.sha256_file is sha256_file and scripted.sha256_file is sha256_file


def test_truncated_and_missing_files_are_detected(index, tmp_path):
    index.save(tmp_path / "ix")
    path = _data_file(tmp_path / "ix", "vectors")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(IndexIntegrityError, match="truncated"):
        load_index(tmp_path / "ix")
    path.unlink()
    with pytest.raises(IndexIntegrityError, match="missing"):
        load_index(tmp_path / "ix")
    (tmp_path / "ix" / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(IndexIntegrityError, match="corrupted"):
        load_index(tmp_path / "ix")
    with pytest.raises(FileNotFoundError, match="not a monai-cir index"):
        load_index(tmp_path)


def test_fingerprint_mismatch_is_refused(index, tmp_path):
    index.save(tmp_path / "ix")
    with pytest.raises(FingerprintMismatchError, match="monai-cir index build"):
        load_index(tmp_path / "ix", expected_fingerprint="fp-other")
    with pytest.raises(FingerprintMismatchError, match="rebuild"):
        index.search(np.zeros(DIM, np.float32), 3, fingerprint="fp-other")
    index.check_fingerprint("fp-a")


def test_save_refuses_a_foreign_folder(index, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no monai-cir index"):
        index.save(tmp_path)


def test_importing_the_index_loads_no_backend():
    # base.py and the package know backends only by name (monai_cir.index.factory): pymilvus and
    # faiss are imported when a backend is first used
    import subprocess
    import sys

    code = "import monai_cir.index.base, monai_cir.index, sys; print(sorted(m for m in sys.modules if 'faiss' in m or 'milvus' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "[]"


def test_a_third_backend_is_one_registration(tmp_path, monkeypatch):
    from monai_cir.index import factory

    class ListBackedIndex(FaissCaseIndex):  # stands in for a new backend module
        backend = "listed"

    monkeypatch.setitem(factory.BACKENDS, "listed", f"{__name__}:ListBackedIndex")
    monkeypatch.setitem(globals(), "ListBackedIndex", ListBackedIndex)
    x, meta = make_cases(20, seed=9)
    ix = create_index(DIM, "fp-l", backend="listed")
    assert type(ix) is ListBackedIndex
    ix.add(x, meta)
    ix.save(tmp_path / "ix")
    assert json.loads((tmp_path / "ix" / MANIFEST_NAME).read_text())["backend"] == "listed"
    back = load_index(tmp_path / "ix", expected_fingerprint="fp-l")
    assert type(back) is ListBackedIndex and hits_key(back.search(x[:2], 5)) == hits_key(ix.search(x[:2], 5))
    with pytest.raises(ValueError, match="unknown index backend 'nope'"):
        create_index(DIM, "fp", backend="nope")


# ----------------------------------------------------------------------------- `monai-cir index` on a user's folder + CSV
# A tiny random network (conftest.make_tiny_net) embeds tiny synthetic images: these check what the command accepts,
# refuses and writes, not retrieval quality.


@pytest.fixture()
def user_folder(tmp_path):
    """A folder of 4 tiny synthetic images (generated pixels, not data) and a CSV describing them."""
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (24, 28, 3), dtype=np.uint8)).save(images / f"case{i}.png")
    table = tmp_path / "cases.csv"
    table.write_text("case_id,image,diagnosis,text,site\n" + "".join(
        f"case{i},case{i}.png,{('melanoma', 'nevus')[i % 2]},flat lesion,{('back', 'head neck')[i % 2]}\n" for i in range(4)))
    return images, table


@pytest.fixture()
def cli(monkeypatch):
    """``cli.run(argv)`` is ``monai-cir`` with the tiny network as every model; ``cli.embedded`` counts the images embedded."""
    from types import SimpleNamespace

    import torch
    from conftest import make_tiny_net

    import monai_cir.networks
    from monai_cir import retrieval
    from monai_cir.cli import main

    net = make_tiny_net()
    monkeypatch.setattr(monai_cir.networks, "load_model", lambda path=None, device=None: net)
    embedded: list[int] = []
    real_embed = retrieval.embed_library
    monkeypatch.setattr(retrieval, "embed_library", lambda net, items, **kw: embedded.append(len(items)) or real_embed(net, items, **kw))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: OpenMP's spinning threads only slow a busy machine down
    yield SimpleNamespace(run=main, embedded=embedded)
    torch.set_num_threads(threads)


def _help(command: str, capsys) -> str:
    """``monai-cir index COMMAND --help``, its line breaks undone."""
    from monai_cir.cli import main

    with pytest.raises(SystemExit):
        main(["index", command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_cli_help_documents_the_csv_columns_and_the_name_default(capsys):
    from monai_cir.data.collections import CONFIRMATIONS

    for command in ("build", "add"):
        text = _help(command, capsys)
        csv_help = text[text.rindex("--csv FILE"):text.rindex("--filter KEY=VALUE")]  # the option list, not the usage line
        assert "confirmation" in csv_help and all(status in csv_help for status in CONFIRMATIONS) and "biopsy" in csv_help
        assert "with --images the CSV file's name" in text  # load_image_csv: the collection is the CSV's stem


def test_cli_build_refuses_bad_input_before_embedding_and_writes_nothing(cli, user_folder, tmp_path, capsys):
    images, table = user_folder
    out = tmp_path / "ix"
    build = ["index", "build", "--images", str(images), "--out", str(out)]
    # a corrupt image: every bad file with its row, before anything is embedded
    (images / "case1.png").write_bytes(b"\x89PNG not really")
    (images / "case3.png").unlink()
    assert cli.run([*build, "--csv", str(table)]) == 2
    err = capsys.readouterr().err
    assert "2 of the 4 images" in err and "case1.png (CSV row 3: not a readable image" in err and "case3.png (CSV row 5: not found)" in err
    # a header-only CSV
    empty = tmp_path / "empty.csv"
    empty.write_text("case_id,image,diagnosis\n")
    assert cli.run([*build, "--csv", str(empty)]) == 2
    assert f"{empty}: the CSV has no rows" in capsys.readouterr().err
    # --confirmed-only on a CSV without a confirmation column says how to mark the confirmed cases
    good = tmp_path / "good.csv"
    good.write_text("image,diagnosis\ncase0.png,nevus\ncase2.png,melanoma\n")
    assert cli.run([*build, "--csv", str(good), "--confirmed-only"]) == 2
    err = capsys.readouterr().err
    assert "none of the 2 cases is histopathology-confirmed" in err and "'confirmation' column" in err
    assert "histopathology" in err and "biopsy" in err and "the CSV has no such column" in err
    assert cli.embedded == [] and not out.exists()
    # a folder of the user's own files: refused before embedding, nothing written into it
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert cli.run([*build, "--csv", str(good)]) == 2
    assert "is not empty and holds no monai-cir index" in capsys.readouterr().err
    assert cli.embedded == [] and sorted(os.listdir(out)) == ["notes.txt"]


def test_cli_add_warns_about_kept_cases_whose_row_changed(cli, user_folder, tmp_path, capsys, caplog):
    """``add`` keeps the cases already there; a corrected row is named with what changed and how to update it,
    and remove + add does update it."""
    images, table = user_folder
    out = tmp_path / "ix"
    assert cli.run(["index", "build", "--images", str(images), "--csv", str(table), "--out", str(out)]) == 0
    rows = table.read_text().splitlines()
    rows[1] = rows[1].replace("melanoma", "nevus")  # case0: corrected diagnosis
    rows[2] = rows[2].replace("flat lesion", "raised lesion")  # case1: corrected text
    table.write_text("\n".join(rows) + "\n")
    add = ["index", "add", str(out), "--images", str(images), "--csv", str(table)]
    caplog.clear()
    with caplog.at_level("WARNING", logger="monai_cir.cli.index"):
        assert cli.run(add) == 0
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith("2 case(s) already in the index differ from their source row")
    assert "case0 (diagnosis 'melanoma' -> 'nevus')" in warning and "case1 (text 'flat lesion' -> 'raised lesion')" in warning
    assert "case2" not in warning and f"monai-cir index remove {out} case0 case1" in warning
    assert load_index(out).get("case0").diagnosis == "melanoma"  # kept as it was
    # what the warning says to do updates the cases
    assert cli.run(["index", "remove", str(out), "case0", "case1"]) == 0
    caplog.clear()
    with caplog.at_level("WARNING", logger="monai_cir.cli.index"):
        assert cli.run(add) == 0
    assert "added 2 cases" in capsys.readouterr().out and not [r for r in caplog.records if r.levelname == "WARNING"]
    updated = load_index(out)
    assert updated.get("case0").diagnosis == "nevus" and updated.get("case1").extra["text"] == "raised lesion" and len(updated) == 4


def test_cli_add_warns_when_a_kept_case_id_names_another_image(cli, user_folder, tmp_path, caplog):
    """A month's batch without a case_id column takes its ids from the file names, which cameras restart: a new lesion's
    IMG_0001 was skipped as "already in the index" with an INFO line only. The kept case whose image is another one is
    warned about, with what to do."""
    from PIL import Image

    images, table = user_folder
    out = tmp_path / "ix"
    assert cli.run(["index", "build", "--images", str(images), "--csv", str(table), "--out", str(out)]) == 0
    feb = tmp_path / "feb"
    feb.mkdir()
    Image.fromarray(np.random.default_rng(7).integers(0, 255, (24, 28, 3), dtype=np.uint8)).save(feb / "case0.png")  # another lesion
    (feb / "case1.png").write_bytes((images / "case1.png").read_bytes())  # the same image again, copied: not warned about
    Image.fromarray(np.random.default_rng(8).integers(0, 255, (24, 28, 3), dtype=np.uint8)).save(feb / "new.png")
    rows = tmp_path / "feb.csv"
    rows.write_text("image,diagnosis,text,site\ncase0.png,melanoma,flat lesion,back\ncase1.png,nevus,flat lesion,head neck\n"
                    "new.png,nevus,flat lesion,back\n")
    caplog.clear()
    with caplog.at_level("WARNING", logger="monai_cir.cli.index"):
        assert cli.run(["index", "add", str(out), "--images", str(feb), "--csv", str(rows)]) == 0
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith("1 case(s) already in the index differ") and "case0 (image " in warning and "another image" in warning
    assert "case1" not in warning.split("(index -> source)")[1].split(".")[0] and "case_id column" in warning
    assert "new" in load_index(out)


def test_cli_remove_drops_the_removed_cases_grid_maps(cli, user_folder, tmp_path, capsys):
    """A case removed for withdrawn consent left its image's path and feature maps in the index folder's grid_maps/,
    which ships with MODELS: they go with it; the other cases' stay."""
    images, table = user_folder
    out = tmp_path / "ix"
    assert cli.run(["index", "build", "--images", str(images), "--csv", str(table), "--out", str(out)]) == 0
    keys = lambda: {Path(k[0]).name for k in json.loads((out / "grid_maps" / "keys.json").read_text())["keys"]}  # noqa: E731
    assert keys() == {"case0.png", "case1.png", "case2.png", "case3.png"}
    capsys.readouterr()
    assert cli.run(["index", "remove", str(out), "case1"]) == 0
    assert keys() == {"case0.png", "case2.png", "case3.png"}
    assert "grid maps dropped (1)" in capsys.readouterr().out
    from monai_cir.grid_store import GridMapStore

    store = GridMapStore.load(out / "grid_maps", load_index(out).fingerprint)
    assert store is not None and len(store) == 3


def test_index_add_and_remove_take_turns(index, tmp_path):
    """`index add` and `index remove` each load the index, change it and save it whole: run side by side, the later save
    undid the other's (a case removed for withdrawn consent came back with the add's save). A writer holds the index's
    lock from load to save; `remove` waits for it, then removes from what the other saved."""
    import subprocess
    import sys
    import time

    from monai_cir.atomic import exclusive_lock

    out = tmp_path / "ix"
    index.save(out)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    with exclusive_lock(out, "a test's add"):
        held = load_index(out)
        remover = subprocess.Popen([sys.executable, "-m", "monai_cir", "index", "remove", str(out), "c3"], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline, said = time.monotonic() + 120, ""
        while remover.poll() is None and "waiting for it to finish" not in said and time.monotonic() < deadline:
            time.sleep(0.2)
            said = _stderr_so_far(remover)
        x, meta = make_cases(1, seed=9, prefix="added")
        held.add(x, meta)
        held.save(out)
    remover.wait(timeout=120)
    assert remover.returncode == 0, remover.stderr.read() if remover.stderr else ""
    final = load_index(out)
    assert "added0" in final and "c3" not in final and len(final) == len(index)


def _stderr_so_far(process) -> str:
    """What a running process wrote to its stderr pipe so far (without blocking)."""
    import select

    text = getattr(process, "_said", "")
    while select.select([process.stderr], [], [], 0)[0]:
        chunk = os.read(process.stderr.fileno(), 4096).decode(errors="replace")
        if not chunk:
            break
        text += chunk
    process._said = text
    return text


def test_a_reader_that_opens_the_index_during_a_save_reads_the_new_one(index, tmp_path, monkeypatch):
    """A save removes the previous generation's files right after its manifest: a reader that had read the old
    manifest found a file missing and was told to restore the index from a backup. It reads the new manifest and
    tries again."""
    from monai_cir.index.faiss_index import FaissCaseIndex

    out = tmp_path / "ix"
    index.save(out)
    real_load, calls = FaissCaseIndex._load.__func__, []

    def saved_meanwhile(cls, directory, manifest, **options):
        calls.append(manifest["files"])
        if len(calls) == 1:  # another process saves between this reader's manifest and its files
            x, meta = make_cases(1, seed=3, prefix="new")
            other = real_load(cls, directory, manifest)
            other.add(x, meta)
            other.save(directory)
        return real_load(cls, directory, manifest, **options)

    monkeypatch.setattr(FaissCaseIndex, "_load", classmethod(saved_meanwhile))
    loaded = load_index(out)
    assert len(calls) == 2 and calls[0] != calls[1] and "new0" in loaded


def test_a_library_that_shrinks_to_exact_search_leaves_no_approximate_file(tmp_path):
    """The save's clean-up removed earlier generations of the roles it wrote: the approximate index's file stayed
    behind, outside the manifest, when the library shrank to exact search."""
    x, meta = make_cases(40, rank=8)
    ix = create_index(DIM, "fp-a", exact_max=20, ann_dim=8, nlist=2)
    ix.add(x, meta)
    out = tmp_path / "ix"
    ix.save(out)
    assert any(p.name.startswith("ann-") for p in out.iterdir())
    ix.remove([m.case_id for m in meta[:30]])
    ix.save(out)
    named = {entry["name"] for entry in json.loads((out / MANIFEST_NAME).read_text())["files"].values()}
    assert {p.name for p in out.iterdir() if p.is_file()} == named | {MANIFEST_NAME}
    assert len(load_index(out)) == 10


@pytest.mark.parametrize("damage", ["no_dim", "no_checksum", "option_of_another_type"])
def test_a_manifest_edited_by_hand_says_what_is_wrong(index, tmp_path, damage):
    out = tmp_path / "ix"
    index.save(out)
    manifest = json.loads((out / "manifest.json").read_text())
    if damage == "no_dim":
        del manifest["dim"]
    elif damage == "no_checksum":
        del next(iter(manifest["files"].values()))["sha256"]
    else:
        manifest["options"]["exact_max"] = "50k"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexIntegrityError, match=r"manifest.json lacks a field or holds one of the wrong type .*restore the folder from a backup"):
        load_index(out)


def test_cli_info_lists_the_case_ids_that_remove_takes(cli, user_folder, tmp_path, capsys):
    """A consent withdrawn: `index remove` needs the case's id, and its refusal of an unknown id points to the command
    that lists them (`index info --case-ids`, before: `index info`, which shows only counts)."""
    images, table = user_folder
    out = tmp_path / "ix"
    assert cli.run(["index", "build", "--images", str(images), "--csv", str(table), "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.run(["index", "info", str(out), "--case-ids"]) == 0
    listed = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    index = load_index(out)
    assert [row[0] for row in listed] == index.case_ids() and all(row[2] == index.get(row[0]).diagnosis for row in listed)
    assert cli.run(["index", "info", str(out), "--case-ids", "--json"]) == 0
    assert [c["case_id"] for c in json.loads(capsys.readouterr().out)] == index.case_ids()
    assert cli.run(["index", "remove", str(out), "no-such-case"]) == 2
    assert f"`monai-cir index info {out} --case-ids` lists the index's cases" in capsys.readouterr().err


def test_a_path_that_is_no_index_says_what_to_give(tmp_path):
    """A typo, a file, a folder of other files: each says what it is and what to give (before: 'rebuild the index with
    `monai-cir index build` --out DIR' for all three, a command the folder of other files would refuse)."""
    from monai_cir.index import read_manifest

    (tmp_path / "cases.csv").write_text("image,diagnosis\n")
    (tmp_path / "photos").mkdir()
    with pytest.raises(FileNotFoundError, match=r"index folder not found: .*nowhere; check the path"):
        read_manifest(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"cases\.csv is a file, not an index folder"):
        read_manifest(tmp_path / "cases.csv")
    with pytest.raises(FileNotFoundError, match=r"photos is not a monai-cir index \(no manifest\.json\): give the folder"):
        read_manifest(tmp_path / "photos")


def test_a_save_clears_what_a_killed_save_left_and_a_full_disk_is_one_line(tmp_path, monkeypatch):
    """Found by review (a library at scale): what a save killed midway left (a whole generation, named by no manifest)
    stayed until a later save succeeded, taking the room that save needed, so every later save failed; FAISS reported
    the full disk as a RuntimeError with its C++ trace (a traceback from `index remove`); and nothing said that a save
    needs the index's size free. The leftovers go before writing; a failed write is an OSError naming the file; a save
    that cannot fit is refused first. The previous index stays loadable throughout."""
    import shutil

    from monai_cir.cli import main

    x, meta = make_cases(30, seed=3)
    index = create_index(DIM, "fp")
    index.add(x, meta)
    folder = tmp_path / "ix"
    index.save(folder)
    killed = [folder / "vectors-0123456789ab.faiss", folder / ".cases-0123456789ab.jsonl.tmp"]
    for path in killed:
        path.write_bytes(b"\0" * 4096)  # a killed save's files

    def full_disk(path):
        raise RuntimeError("Error in faiss::FileIOWriter::operator() at index_write.cpp:499: fwrite: No space left on device")

    with pytest.raises(OSError, match=r"could not write the index's vectors file in .*: .*No space left on device"):
        index_base.write_generation(folder, {"vectors": ("faiss", full_disk)}, {"backend": "faiss"})
    assert not any(path.exists() for path in killed)
    assert len(load_index(folder, expected_fingerprint="fp")) == 30
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(OSError, match=r"not enough free space to save the index .* a save writes a new copy"):
        index.save(folder)
    assert main(["index", "remove", str(folder), meta[0].case_id]) == 2  # one line (main's OSError), nothing removed
    assert len(load_index(folder, expected_fingerprint="fp")) == 30


def test_index_info_says_whether_search_is_exact_or_approximate(tmp_path, capsys):
    """Found by review: past exact_max cases search became approximate without a word (`index info` printed only
    `exact_max: 50000`): info and `monai-cir index info` say which, and with what."""
    from monai_cir.cli import main

    x, meta = make_cases(60, seed=4)
    small = create_index(DIM, "fp", exact_max=100)
    small.add(x, meta)
    assert small.info()["search"].startswith("exact: every case is scored (up to 100 cases")
    large = create_index(DIM, "fp", exact_max=20, ann_dim=8, nlist=2)
    large.add(x, meta)
    large.save(tmp_path / "ix")
    assert main(["index", "info", str(tmp_path / "ix")]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.strip().startswith("search:"))
    assert "approximate (more than 20 cases): IVF1,SQ8 trained on 60 cases (retrained past 240), 1 of its lists probed" in line, line


def test_a_manifest_naming_a_file_outside_the_index_folder_is_refused(index, tmp_path):
    """Found by review: the manifest's file names were joined to the folder as given, so "../x" or an absolute path made
    load_index parse (and, with the manifest's own checksum, trust) a file elsewhere."""
    index.save(tmp_path / "ix")
    manifest_path = tmp_path / "ix" / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    outside = tmp_path / "outside.faiss"
    outside.write_bytes(_data_file(tmp_path / "ix", "vectors").read_bytes())
    for name in ("../outside.faiss", str(outside)):
        manifest["files"]["vectors"]["name"] = name
        manifest_path.write_text(json.dumps(manifest))
        with pytest.raises(IndexIntegrityError, match="which is not a file of the index folder"):
            load_index(tmp_path / "ix")
