"""Library API (embed, build, search) and the ``index`` / ``search`` commands."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import make_tiny_net
from PIL import Image

from monai_cir import retrieval
from monai_cir.index import FingerprintMismatchError, load_index


@dataclass
class Record:  # the CaseRecord contract (monai_cir.data.collections)
    case_id: str
    image_path: Path
    diagnosis: str
    label: int
    text: str
    site: str = "unknown"
    collection: str = "synthetic"
    metadata: dict[str, Any] = field(default_factory=dict)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny batches (conftest.one_torch_thread)


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> list[Record]:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    records = []
    for i in range(6):
        path = root / f"case{i}.png"
        Image.fromarray(rng.integers(0, 255, (40 + 4 * i, 48, 3), dtype=np.uint8)).save(path)
        records.append(Record(f"case{i}", path, ("melanoma", "nevus")[i % 2], i % 2, "", site=("trunk", "head and neck")[i % 2], metadata={"sex": "female", "age": np.int64(40)}))
    return records


@pytest.fixture(scope="module")
def net():
    return make_tiny_net()


def test_embed_library_is_batch_invariant_and_matches_the_network(net, library):
    a = retrieval.embed_library(net, library, batch_size=4, device="cpu", progress=False)
    b = retrieval.embed_library(net, [r.image_path for r in library], batch_size=1, device="cpu", progress=False)
    assert a.shape == (6, net.embedding_dim) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-5)
    with torch.inference_mode():
        direct = net.encode_target(retrieval.to_image_tensor(library[2].image_path, net.image_size)[None]).numpy()
    np.testing.assert_allclose(a[2:3], direct, atol=1e-5)
    arrays = retrieval.embed_library(net, [np.asarray(Image.open(r.image_path)) for r in library[:2]], device="cpu", progress=False)
    np.testing.assert_allclose(arrays, a[:2], atol=1e-5)
    assert retrieval.embed_library(net, [], progress=False).shape == (0, net.embedding_dim)


def test_build_and_search(net, library, tmp_path):
    index = retrieval.build_index(net, library, batch_size=4, device="cpu", progress=False)
    assert len(index) == 6 and index.fingerprint == net.fingerprint()
    meta = index.get("case3")
    assert meta.diagnosis == "nevus" and meta.site == "head and neck" and meta.collection == "synthetic"
    assert meta.image_path == str(library[3].image_path) and meta.extra == {"sex": "female", "age": 40, "label": 1}
    for record in library:
        hits = retrieval.search(net, index, record.image_path, "", k=3, device="cpu")
        assert hits[0].case_id == record.case_id and hits[0].rank == 1
        assert hits[0].score == pytest.approx(3.0, abs=1e-4)  # image-only query of itself: S = 3 levels x 1
    hits = retrieval.search(net, index, library[0].image_path, "raised, irregular pigment network", k=6, filters={"site": "head and neck"})
    assert len(hits) == 3 and {h.metadata.site for h in hits} == {"head and neck"}
    index.save(tmp_path / "ix")
    loaded = load_index(tmp_path / "ix", expected_fingerprint=retrieval.model_fingerprint(net))
    assert [h.case_id for h in retrieval.search(net, loaded, library[4].image_path, "", k=6)] == [h.case_id for h in retrieval.search(net, index, library[4].image_path, "", k=6)]


def test_answer_shows_what_the_app_shows(net, library, monkeypatch):
    """retrieval.answer: the similarity ranking (search) with the differential slot's case placed when the
    checkpoint records a slot and the query's first cases share a diagnosis; differential=False and a
    checkpoint without a slot give search's ranking; the pool holds pool_size cases of that ranking."""
    from monai_cir.differential import DifferentialSlot

    index = retrieval.build_index(net, library, batch_size=4, device="cpu", progress=False)
    monkeypatch.setattr(net, "checkpoint_info", {"differential": DifferentialSlot(margin=100.0, rank=2).to_dict()})
    opened = 0
    for record in library:
        similarity = retrieval.search(net, index, record.image_path, "", k=6)
        shown = retrieval.answer(net, index, record.image_path, "", k=3, pool_size=5)
        assert [h.case_id for h in shown.pool] == [h.case_id for h in similarity[:5]]
        plain = retrieval.answer(net, index, record.image_path, "", k=3, differential=False)
        assert [h.case_id for h in plain.hits] == [h.case_id for h in similarity[:3]] and plain.differential is None
        other = next((i for i, h in enumerate(similarity) if h.metadata.diagnosis != similarity[0].metadata.diagnosis), None)
        if other is not None and other >= 2:  # the closest case of another diagnosis is shown at rank 2
            assert [h.case_id for h in shown.hits] == [similarity[0].case_id, similarity[other].case_id, similarity[1].case_id]
            assert [h.rank for h in shown.hits] == [1, 2, 3] and shown.hits[1].score == pytest.approx(similarity[other].score)
            assert shown.differential["similarity_rank"] == other + 1 and "rank 2 is the closest" in shown.differential["notice"]
            opened += 1
        else:
            assert [h.case_id for h in shown.hits] == [h.case_id for h in similarity[:3]] and shown.differential is None
    assert opened, "no query's first two cases shared a diagnosis: the slot was never exercised"
    monkeypatch.setattr(net, "checkpoint_info", {})
    assert retrieval.answer(net, index, library[0].image_path, "", k=3).differential is None


def test_index_build_keeps_the_grid_maps_explanations_read(net, library, tmp_path):
    """The grid maps the index build keeps (same forward) are the ones an explanation computes from
    the image; an index that gains cases merges them; a changed file, another model or a damaged
    store misses (the caller computes), it never serves maps of something else."""
    import os
    import shutil

    from monai_cir.explain import grid_maps
    from monai_cir.grid_store import GridMapStore, file_identity

    store_dir = tmp_path / "ix" / "grid_maps"
    index = retrieval.build_index(net, library[:4], batch_size=3, device="cpu", progress=False, grid_store=store_dir)
    index.save(tmp_path / "ix")  # the store inside the index folder does not make it "foreign"
    fingerprint = retrieval.model_fingerprint(net)
    store = GridMapStore.load(store_dir, fingerprint)
    assert store is not None and len(store) == 4
    with torch.inference_mode():
        image = retrieval.to_image_tensor(library[2].image_path, net.image_size)[None]
        expected = grid_maps(net, net.image_features(image))
    got = store.get(file_identity(library[2].image_path))
    assert [tuple(g.shape) for g in got] == [tuple(e.shape) for e in expected]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)

    retrieval.build_index(net, library[4:], device="cpu", progress=False, index=index, grid_store=store_dir)
    assert len(GridMapStore.load(store_dir, fingerprint)) == 6

    moved = tmp_path / "moved.png"
    shutil.copy(library[1].image_path, moved)
    key = file_identity(moved)
    GridMapStore.write(store_dir, fingerprint, {key: got})
    os.utime(moved, ns=(key[1] + 10**9, key[1] + 10**9))  # the file changed after the build
    assert GridMapStore.load(store_dir, fingerprint).get(file_identity(moved)) is None
    assert GridMapStore.load(store_dir, "another model") is None
    (store_dir / "maps.npy").write_bytes(b"not an array")
    assert GridMapStore.load(store_dir, fingerprint) is None


def test_search_refuses_another_model(net, library):
    index = retrieval.build_index(net, library[:2], device="cpu", progress=False)
    other = make_tiny_net(beta=0.5)
    with pytest.raises(FingerprintMismatchError, match="monai-cir index build"):
        retrieval.search(other, index, library[0].image_path, "", k=1)
    with pytest.raises(ValueError, match="already in the index"):
        retrieval.build_index(net, library[:1], index=index, progress=False)
    retrieval.build_index(net, library[:1], index=index, update=True, progress=False)
    assert len(index) == 2


def test_model_fingerprint_cache_follows_weight_changes():
    net = make_tiny_net()
    first = retrieval.model_fingerprint(net)
    assert retrieval.model_fingerprint(net) == first == net.fingerprint()
    with torch.no_grad():
        next(net.alignments.parameters()).add_(1.0)
    assert retrieval.model_fingerprint(net) == net.fingerprint() != first


def test_cli_build_info_search(net, library, tmp_path, monkeypatch, capsys):
    import monai_cir.networks
    from monai_cir.cli import main

    monkeypatch.setattr(monai_cir.networks, "load_model", lambda path=None, device=None: net)
    csv = tmp_path / "cases.csv"
    csv.write_text("case_id,image,diagnosis,site\n" + "".join(f"{r.case_id},{r.image_path.name},{r.diagnosis},{r.site}\n" for r in library))
    out = tmp_path / "ix"
    assert main(["index", "build", "--images", str(library[0].image_path.parent), "--csv", str(csv), "--out", str(out), "--batch-size", "4", "--limit", "5"]) == 0
    assert main(["index", "build", "--images", str(library[0].image_path.parent), "--csv", str(csv), "--out", str(out)]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err
    assert main(["index", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cases"] == 5 and info["backend"] == "faiss"
    assert main(["search", "--index", str(out), "--image", str(library[1].image_path), "--text", "", "-k", "3", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    hits = answer["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["case_id"] == "case1" and hits[0]["diagnosis"] == "nevus"
    assert answer["ranking"] == "similarity"  # no diagnosis prior in this network
    assert main(["search", "--index", str(out), "--image", str(library[1].image_path), "--site", "same", "-k", "2"]) == 0
    captured = capsys.readouterr()
    assert "unknown" in captured.err and "case1" in captured.out.splitlines()[1]
    assert main(["search", "--index", str(out), "--image", str(library[1].image_path), "--site", "trunk"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["rank", "case", "id"] and all(line.split()[-1] == "trunk" for line in table[1:])
    # a checkpoint that records a differential slot: the search shows what the deploy app shows
    from monai_cir.differential import DifferentialSlot

    opened = 0
    for record in library[:5]:
        query = ["search", "--index", str(out), "--image", str(record.image_path), "--json"]
        monkeypatch.setattr(net, "checkpoint_info", {})
        assert main([*query, "-k", "5", "--no-differential"]) == 0
        full = json.loads(capsys.readouterr().out)["hits"]
        other = next((i for i, h in enumerate(full) if h["diagnosis"] != full[0]["diagnosis"]), None)
        monkeypatch.setattr(net, "checkpoint_info", {"differential": DifferentialSlot(margin=100.0, rank=2).to_dict()})
        assert main([*query, "-k", "3"]) == 0
        captured = capsys.readouterr()
        shown = json.loads(captured.out)
        if other is not None and other >= 2:  # the closest case of another diagnosis moves up to rank 2
            assert [h["case_id"] for h in shown["hits"]] == [full[0]["case_id"], full[other]["case_id"], full[1]["case_id"]]
            assert shown["differential"]["similarity_rank"] == other + 1 and "rank 2 is the closest" in captured.err
            opened += 1
        else:  # rank 2 is another diagnosis already (or there is none): the slot stays shut
            assert [h["case_id"] for h in shown["hits"]] == [h["case_id"] for h in full[:3]] and shown["differential"] is None
    assert opened, "no query's first two cases shared a diagnosis: the slot was never exercised"
    monkeypatch.setattr(monai_cir.networks, "load_model", lambda path=None, device=None: make_tiny_net(beta=0.5))
    assert main(["search", "--index", str(out), "--image", str(library[1].image_path)]) == 2
    assert "rebuild the index" in capsys.readouterr().err


def test_library_functions_run_where_the_network_is(net, library, monkeypatch):
    """``device=None`` has one meaning in monai_cir.retrieval: where the network is. With CUDA reported
    present, a network the caller put on the CPU stays there (embed_library used to move it to CUDA)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    embeddings = retrieval.embed_library(net, library[:2], progress=False)
    query = retrieval.encode_query(net, library[0].image_path, "")
    assert embeddings.shape == (2, net.embedding_dim) and query.shape == (1, net.embedding_dim)
    assert {p.device.type for p in net.parameters()} == {"cpu"}


def test_resolve_device_is_the_one_place_a_default_device_is_chosen(monkeypatch):
    from monai_cir.config import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:0")
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None) == resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")


def test_cli_loads_the_network_on_the_device_asked_for(net, library, tmp_path, monkeypatch, capsys):
    import monai_cir.networks
    from monai_cir.cli import main

    asked: list[Any] = []
    monkeypatch.setattr(monai_cir.networks, "load_model", lambda path=None, device=None: asked.append(device) or net)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    csv = tmp_path / "cases.csv"
    csv.write_text("image,diagnosis\n" + "".join(f"{r.image_path.name},{r.diagnosis}\n" for r in library[:2]))
    out = tmp_path / "ix"
    assert main(["index", "build", "--images", str(library[0].image_path.parent), "--csv", str(csv), "--out", str(out)]) == 0
    assert main(["search", "--index", str(out), "--image", str(library[1].image_path), "--device", "cpu"]) == 0
    assert asked == [torch.device("cpu"), torch.device("cpu")]
    capsys.readouterr()
    assert main(["search", "--index", str(out), "--image", str(library[1].image_path), "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err and len(asked) == 2  # refused before loading
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the default follows CUDA (the fake network stays on CPU)
    assert main(["search", "--index", str(out), "--image", str(library[1].image_path)]) == 0
    assert asked[-1] == torch.device("cuda")


@pytest.mark.integration
def test_real_images_find_themselves(offline_net, shared_data):
    from monai_cir.data import load_collection

    records = load_collection("isic-uda1", root=shared_data)[:6]
    index = retrieval.build_index(offline_net, records, batch_size=6, device="cpu", progress=False)
    assert len(index) == 6 and index.dim == offline_net.embedding_dim == 1040
    for record in records:
        hits = retrieval.search(offline_net, index, record.image_path, record.text, k=3, device="cpu")
        assert hits[0].case_id == record.case_id, (record.case_id, [(h.case_id, h.score) for h in hits])
        assert hits[0].metadata.diagnosis == record.diagnosis and hits[0].metadata.collection == "isic-uda1"


def test_cli_build_from_dicom(net, library, tmp_path, monkeypatch, capsys):
    import monai_cir.networks
    from monai_cir.dicom import dicomize
    from monai_cir.cli import main

    monkeypatch.setattr(monai_cir.networks, "load_model", lambda path=None, device=None: net)
    done, failed = dicomize.dicomize_records(library[:3], tmp_path / "dicom", compression="none", progress=False)
    assert not failed and len(done) == 3
    out = tmp_path / "ix"
    assert main(["index", "build", "--dicom", str(tmp_path / "dicom"), "--out", str(out)]) == 0
    assert "indexed 3 cases" in capsys.readouterr().out
    index = load_index(out)
    assert sorted(index.case_ids()) == ["case0", "case1", "case2"]
    meta = index.get("case1")
    assert meta.diagnosis == "nevus" and meta.site == "head and neck"
    assert meta.study_uid == done[1].uids.study_uid and meta.sop_instance_uid and meta.sop_class_uid
    assert main(["search", "--index", str(out), "--image", str(library[2].image_path), "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["case_id"] == "case2"


def test_cli_search_evidence_and_explanations(net, library, tmp_path, monkeypatch, capsys):
    import monai_cir.networks
    from monai_cir.cli import main

    monkeypatch.setattr(monai_cir.networks, "load_model", lambda path=None, device=None: net)
    csv = tmp_path / "cases.csv"
    csv.write_text("case_id,image,diagnosis,site\n" + "".join(f"{r.case_id},{r.image_path.name},{r.diagnosis},{r.site}\n" for r in library))
    out = tmp_path / "ix"
    assert main(["index", "build", "--images", str(library[0].image_path.parent), "--csv", str(csv), "--out", str(out)]) == 0
    capsys.readouterr()
    png = tmp_path / "why.png"
    args = ["search", "--index", str(out), "--image", str(library[2].image_path), "--text", "irregular streaks", "-k", "2"]
    assert main(args + ["--evidence", "--explain", str(png), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["hits"]) == 2 and len(payload["explanations"]) == 2
    evidence = payload["evidence"]
    # all 6 library cases vote (k=16 > library): the distribution covers both diagnoses and sums to 1
    assert set(evidence["distribution"]) == {"melanoma", "nevus"}
    assert sum(evidence["distribution"].values()) == pytest.approx(1.0)
    assert evidence["label"].lower().startswith("decision support")
    with Image.open(png) as img:
        assert img.size[0] > 100 and img.size[1] > 100
    assert main(args + ["--evidence"]) == 0
    assert "Decision support" in capsys.readouterr().out


def _cli_hits(main, capsys, out, library):
    """(case id, rounded score) of the top 4 for every library image as a query."""
    keys = []
    for record in library:
        assert main(["search", "--index", str(out), "--image", str(record.image_path), "-k", "4", "--json"]) == 0
        keys.append([(h["case_id"], round(h["score"], 4)) for h in json.loads(capsys.readouterr().out)["hits"]])
    return keys


def test_cli_add_equals_a_fresh_build_and_remove(net, library, tmp_path, monkeypatch, capsys):
    import monai_cir.networks
    from monai_cir.cli import main

    monkeypatch.setattr(monai_cir.networks, "load_model", lambda path=None, device=None: net)
    csv = tmp_path / "cases.csv"
    rows = "".join(f"{r.case_id},{r.image_path.name},{r.diagnosis},{r.site}\n" for r in library)
    csv.write_text("case_id,image,diagnosis,site\n" + rows)
    first = tmp_path / "first.csv"
    first.write_text("case_id,image,diagnosis,site\n" + "".join(rows.splitlines(keepends=True)[:4]))
    images = str(library[0].image_path.parent)
    assert main(["index", "build", "--images", images, "--csv", str(csv), "--out", str(tmp_path / "fresh")]) == 0
    assert main(["index", "build", "--images", images, "--csv", str(first), "--out", str(tmp_path / "grown")]) == 0
    capsys.readouterr()

    embedded = []
    real_embed = retrieval.embed_library
    monkeypatch.setattr(retrieval, "embed_library", lambda net, items, **kw: embedded.append(len(items)) or real_embed(net, items, **kw))
    assert main(["index", "add", str(tmp_path / "grown"), "--images", images, "--csv", str(csv)]) == 0
    assert "added 2 cases" in capsys.readouterr().out and embedded == [2]  # the 4 already there are not re-embedded
    assert _cli_hits(main, capsys, tmp_path / "grown", library) == _cli_hits(main, capsys, tmp_path / "fresh", library)
    assert main(["index", "add", str(tmp_path / "grown"), "--images", images, "--csv", str(csv)]) == 0
    assert "no new cases" in capsys.readouterr().out and embedded == [2]

    assert main(["index", "remove", str(tmp_path / "grown"), "case1", "case4"]) == 0
    assert "removed 2 cases" in capsys.readouterr().out
    after = load_index(tmp_path / "grown")
    assert sorted(after.case_ids()) == ["case0", "case2", "case3", "case5"]
    assert all(h[0] not in ("case1", "case4") for hits in _cli_hits(main, capsys, tmp_path / "grown", library) for h in hits)
    assert main(["index", "remove", str(tmp_path / "grown"), "case0", "nope"]) == 2  # all or nothing
    assert "nope" in capsys.readouterr().err and len(load_index(tmp_path / "grown")) == 4

    # an index of another model is refused before anything is embedded
    monkeypatch.setattr(monai_cir.networks, "load_model", lambda path=None, device=None: make_tiny_net(beta=0.5))
    assert main(["index", "add", str(tmp_path / "grown"), "--images", images, "--csv", str(csv)]) == 2
    assert "rebuild the index" in capsys.readouterr().err and embedded == [2]


@pytest.mark.parametrize("crash_at", ["embedding", "commit"])
def test_cli_add_crash_leaves_the_previous_index(net, library, tmp_path, monkeypatch, capsys, crash_at):
    import os

    import monai_cir.networks
    from monai_cir.cli import main
    from monai_cir.index import MANIFEST_NAME
    from monai_cir.index import base as index_base

    monkeypatch.setattr(monai_cir.networks, "load_model", lambda path=None, device=None: net)
    csv = tmp_path / "cases.csv"
    csv.write_text("case_id,image,diagnosis,site\n" + "".join(f"{r.case_id},{r.image_path.name},{r.diagnosis},{r.site}\n" for r in library))
    images, out = str(library[0].image_path.parent), tmp_path / "ix"
    assert main(["index", "build", "--images", images, "--csv", str(csv), "--out", str(out), "--limit", "3"]) == 0
    capsys.readouterr()
    before_files = sorted(os.listdir(out))
    before_hits = _cli_hits(main, capsys, out, library)
    if crash_at == "embedding":
        def crash(net, items, **kw):
            raise RuntimeError("simulated crash")

        monkeypatch.setattr(retrieval, "embed_library", crash)
    else:
        real_replace = os.replace

        def crash(src, dst):
            if os.path.basename(str(dst)) == MANIFEST_NAME:
                raise RuntimeError("simulated crash")
            return real_replace(src, dst)

        monkeypatch.setattr(index_base.os, "replace", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["index", "add", str(out), "--images", images, "--csv", str(csv)])
    monkeypatch.undo()
    monkeypatch.setattr(monai_cir.networks, "load_model", lambda path=None, device=None: net)
    assert sorted(os.listdir(out)) == before_files
    assert len(load_index(out)) == 3 and _cli_hits(main, capsys, out, library) == before_hits


def test_qido_paging_ends_when_the_server_ignores_offset(monkeypatch, caplog):
    """Orthanc 1.10 ignores offset when ModalitiesInStudy is given: dicomweb-client's get_remaining asked for the next page
    forever (the same studies each time, memory growing, nothing printed). Paging ends at a page that brings no new study
    and says so when that page was full; a server that pages right gives every study once."""
    from monai_cir import retrieval

    monkeypatch.setattr(retrieval, "QIDO_PAGE", 2)
    studies = [{"0020000D": {"vr": "UI", "Value": [f"1.2.{i}"]}} for i in range(5)]

    class Client:
        def __init__(self, honours_offset: bool) -> None:
            self.honours_offset, self.calls = honours_offset, 0

        def search_for_studies(self, search_filters, fields, offset, limit):
            self.calls += 1
            assert self.calls < 10, "paging did not end"
            start = offset if self.honours_offset else 0
            return studies[start : start + limit]

    right = Client(honours_offset=True)
    assert [s["0020000D"]["Value"][0] for s in retrieval._all_studies(right, {}, None)] == [f"1.2.{i}" for i in range(5)]
    ignoring = Client(honours_offset=False)
    with caplog.at_level("WARNING", logger="monai_cir.retrieval"):
        found = retrieval._all_studies(ignoring, {"ModalitiesInStudy": "DMS"}, None)
    assert [s["0020000D"]["Value"][0] for s in found] == ["1.2.0", "1.2.1"] and ignoring.calls == 2
    assert "it ignores offset for this search" in caplog.text


def test_a_dicomweb_pull_writes_only_below_its_folder_whatever_uids_the_server_sends(tmp_path, monkeypatch, caplog):
    """Found by review: the pull wrote to folder / StudyInstanceUID / f"{SOPInstanceUID}.dcm" with the server's values
    unchecked: "../outside" made a folder beside the pull folder, an absolute SOP Instance UID a file anywhere. Values
    that are no DICOM UID are skipped with a warning."""
    import dicomweb_client.api as api
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pull, escaped = tmp_path / "pull", tmp_path / "escaped"
    good_study = generate_uid()

    def instance(study: str, sop: str) -> Dataset:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SOPInstanceUID, ds.StudyInstanceUID = sop, study
        return ds

    class Server:
        def __init__(self, url, headers=None):
            pass

        def search_for_studies(self, **kwargs):
            if kwargs.get("offset", 0):
                return []
            return [{"0020000D": {"vr": "UI", "Value": [uid]}} for uid in ("../escaped", good_study)]

        def retrieve_study(self, uid, media_types=None):
            return [instance(uid, str(escaped / "file")), instance(uid, "../../escaped-file")]

    monkeypatch.setattr(api, "DICOMwebClient", Server)
    with pytest.raises(ValueError):  # nothing left to index
        retrieval.dicomweb_library("http://pacs.example", pull_to=pull)
    assert not escaped.exists() and not (tmp_path / "escaped-file.dcm").exists() and not list(tmp_path.glob("*.dcm"))
    assert sorted(p.name for p in pull.iterdir()) == [good_study]
    assert "is not a DICOM UID" in caplog.text


def test_a_damaged_grid_map_store_costs_speed_only(tmp_path, caplog):
    """Found by review: a keys.json holding a JSON list raised AttributeError out of GridMapStore.load, which the app
    calls unguarded while loading its models (the app stopped); level shapes of two values loaded and failed later in
    get(). Either is "unreadable: not used", as the docs say of a damaged store."""
    import json as _json

    from monai_cir.grid_store import GridMapStore

    folder = tmp_path / "grid_maps"
    GridMapStore.write(folder, "fp", {("a.dcm", 1, 2): [np.ones((2, 3, 3), np.float32)]})
    assert GridMapStore.load(folder, "fp") is not None
    header = _json.loads((folder / "keys.json").read_text())
    for damaged in ([header], {**header, "shapes": [[2, 9]]}, {**header, "shapes": [[2, 3, "3"]]}):
        (folder / "keys.json").write_text(_json.dumps(damaged))
        caplog.clear()
        assert GridMapStore.load(folder, "fp") is None
        assert "unreadable" in caplog.text
