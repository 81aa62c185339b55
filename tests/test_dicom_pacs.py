"""A real PACS: Orthanc on loopback; C-STORE dicomized studies and the answers, read back over
DICOMweb (QIDO to find, WADO to retrieve), unchanged."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pydicom
import pytest

try:
    from tests.orthanc import orthanc_server
except ImportError:  # pytest's rootdir-less import mode
    from orthanc import orthanc_server  # type: ignore[no-redef]  # noqa: F401

pytestmark = [pytest.mark.pacs, pytest.mark.slow]


def _retrieve(client, ds):
    # transfer-syntax=* : the stored bytes, no transcoding by the server
    return client.retrieve_instance(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, media_types=(("application/dicom", "*"),)
    )


def test_store_and_read_back_over_dicomweb(orthanc_server, shared_data, tmp_path):
    from dicomweb_client.api import DICOMwebClient

    from monai_cir.data.collections import load_collection
    from monai_cir.dicom.dicomize import dicomize_records
    from monai_cir.dicom.publish import c_store, stow_rs
    from monai_cir.dicom.reader import read_dicom_folder
    from monai_cir.dicom.report_pdf import similar_cases_pdf
    from monai_cir.dicom.sr import read_similar_cases_sr, similar_cases_sr

    done, failed = dicomize_records(load_collection("isic-uda1")[:3], tmp_path / "studies", progress=False)
    assert not failed
    scan = read_dicom_folder(tmp_path / "studies")
    query, library = scan.queries[0], scan.queries[1:]
    hits = [
        NS(rank=i, case_id=q.case_id, score=1.0 - i / 10, metadata=NS(diagnosis=q.diagnosis, study_uid=q.study_uid, series_uid=q.series_uid,
           sop_instance_uid=q.sop_instance_uid, sop_class_uid=q.sop_class_uid, collection=q.collection, site=q.site))
        for i, q in enumerate(library, 1)
    ]
    answer = similar_cases_sr(query, hits)
    pdf = similar_cases_pdf(query, hits)

    files = [c.image_file for c in done] + [c.sr_file for c in done]
    results = c_store(files + [answer], orthanc_server.node)
    assert all(r.ok for r in results), results
    # the PDF over STOW-RS (the other publishing path)
    assert all(r.ok for r in stow_rs([pdf], orthanc_server.dicomweb_url))

    client = DICOMwebClient(orthanc_server.dicomweb_url)
    originals = [pydicom.dcmread(f) for f in files] + [answer, pdf]
    for original in originals:
        found = client.search_for_instances(study_instance_uid=original.StudyInstanceUID)
        uids = {pydicom.Dataset.from_json(item).SOPInstanceUID for item in found}
        assert original.SOPInstanceUID in uids
        try:
            back = _retrieve(client, original)
        except Exception as err:
            raise AssertionError(f"WADO of {original.SOPClassUID.name}: {err}") from err
        assert back.SOPInstanceUID == original.SOPInstanceUID and back.SOPClassUID == original.SOPClassUID
        if "PixelData" in original:
            assert str(back.file_meta.TransferSyntaxUID) == str(original.file_meta.TransferSyntaxUID)
            assert back.PixelData == original.PixelData  # same bytes (JPEG stream untouched)
        if "ContentSequence" in original:
            assert back.ContentSequence == original.ContentSequence
        if "EncapsulatedDocument" in original:
            assert back.EncapsulatedDocument == original.EncapsulatedDocument

    report = read_similar_cases_sr(_retrieve(client, answer))
    assert [(m.rank, m.sop_instance_uid) for m in report.matches] == [(h.rank, h.metadata.sop_instance_uid) for h in hits]
