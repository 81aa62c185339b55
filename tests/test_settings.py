"""The app's settings (``deploy_app.settings``): app.yaml < environment < flags, empty values, errors
that name the setting, and the DICOM node syntax (``monai_cir.dicom.publish``) they share with the service."""

from __future__ import annotations

import pytest

from deploy_app.settings import AppSettings, split_argv
from monai_cir.config import layered_settings
from monai_cir.dicom.publish import DicomNode, parse_dicom_node
from monai_cir.service import ServiceSettings


def flags(*argv: str):
    return split_argv(["deploy_app", *argv])[0]


@pytest.fixture
def app_yaml(tmp_path):
    path = tmp_path / "app.yaml"
    path.write_text("settings:\n  top_k: 7\n  site: same\n  calling_aet: FROMYAML\n  batch_size: 3\n  device: null\n")
    return path


def test_layering_yaml_then_environment_then_flags(app_yaml):
    s = AppSettings.resolve(flags("--top-k", "9"), app_yaml=app_yaml, environ={"MONAI_CIR_TOP_K": "8", "MONAI_CIR_SITE": "back"})
    assert s.top_k == 9  # flag over environment over yaml
    assert s.site == "back"  # environment over yaml
    assert (s.calling_aet, s.batch_size) == ("FROMYAML", 3)  # yaml over the defaults
    assert s.device == "auto"  # null in the yaml: the default
    s = AppSettings.resolve(flags(), app_yaml=app_yaml, environ={"MONAI_CIR_TOP_K": "8", "MONAI_CIR_WRITE_PDF": "false"})
    assert (s.top_k, s.write_pdf) == (8, False)  # no flag: the environment
    assert AppSettings.resolve(flags("--no-pdf"), app_yaml=app_yaml, environ={"MONAI_CIR_WRITE_PDF": "true"}).write_pdf is False


def test_empty_values_leave_the_layer_below(app_yaml):
    # a blank variable and an unset flag (None, or [] for an append flag) are not values
    s = AppSettings.resolve(flags(), app_yaml=app_yaml, environ={"MONAI_CIR_TOP_K": "  ", "MONAI_CIR_CALLING_AET": ""})
    assert (s.top_k, s.calling_aet) == (7, "FROMYAML")
    small = app_yaml.parent / "small.yaml"
    small.write_text("part:\n  a: 1\n  b: ''\n  c: []\n")
    env = {"a": "A", "b": "B", "c": "C"}
    assert layered_settings("part", "abc", env, app_yaml=small, environ={}) == {"a": 1}  # '' and [] in the yaml
    got = layered_settings("part", "abc", env, app_yaml=small, environ={"A": "2", "B": "x", "C": " "}, flags={"a": None, "b": [], "c": " "})
    assert got == {"a": "2", "b": "x"}
    assert layered_settings("part", "abc", env, app_yaml=small, environ={"A": "2"}, flags={"a": 0}) == {"a": 0}  # 0 and False are values
    # the service resolves through the same function, so the same values are empty there
    yaml_file = app_yaml.parent / "serve.yaml"
    yaml_file.write_text("serve:\n  port: 11000\n  peers: []\n")
    s = ServiceSettings.resolve({"port": None, "peers": []}, app_yaml=yaml_file, environ={"MONAI_CIR_SERVE_PEERS": "X", "MONAI_CIR_SERVE_PORT": " "})
    assert (s.port, s.peers) == (11000, ["X"])


def test_a_bad_value_names_the_setting_and_its_variable(app_yaml):
    with pytest.raises(ValueError, match=r"top_k \(MONAI_CIR_TOP_K\) must be a whole number >= 1, got 'many'"):
        AppSettings.resolve(app_yaml=app_yaml, environ={"MONAI_CIR_TOP_K": "many"})
    with pytest.raises(ValueError, match=r"top_k \(MONAI_CIR_TOP_K\) must be a whole number >= 1, got 0"):
        AppSettings.resolve(flags("-k", "0"), app_yaml=app_yaml, environ={})
    with pytest.raises(ValueError, match=r"explain \(MONAI_CIR_EXPLAIN\) must be true or false .*got 'maybe'"):
        AppSettings.resolve(app_yaml=app_yaml, environ={"MONAI_CIR_EXPLAIN": "maybe"})
    with pytest.raises(ValueError, match=r"calling_aet \(MONAI_CIR_CALLING_AET\) must be an AE title of at most 16 characters"):
        AppSettings.resolve(flags("--calling-aet", "A" * 17), app_yaml=app_yaml, environ={})
    # a site the vocabulary does not know (before: exit 0 with every study skipped as a problem)
    with pytest.raises(ValueError, match=r"site \(MONAI_CIR_SITE\): unknown site condition 'nowhere': use 'any', 'same' or a site of"):
        AppSettings.resolve(app_yaml=app_yaml, environ={"MONAI_CIR_SITE": "nowhere"})
    assert AppSettings.resolve(flags("--site", "back"), app_yaml=app_yaml, environ={}).site == "back"  # an alias of trunk
    app_yaml.write_text("settings:\n  top-k: 3\n")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['top-k'\] in 'settings:'; known: .*'top_k'"):
        AppSettings.resolve(app_yaml=app_yaml, environ={})


@pytest.mark.parametrize("text", ["127.0.0.1:4242:ORTHANC", "ORTHANC@127.0.0.1:4242", " 127.0.0.1 : 4242 : ORTHANC "])
def test_both_node_syntaxes_give_one_node(text, app_yaml):
    node = parse_dicom_node(text)
    assert node == DicomNode("ORTHANC", "127.0.0.1", 4242)
    assert str(node) == "127.0.0.1:4242:ORTHANC"  # what results.json records (dicom://...), and it parses back
    assert parse_dicom_node(str(node)) == node
    assert AppSettings.resolve(flags("--publish-dicom", text), app_yaml=app_yaml, environ={}).dicom_node == node


@pytest.mark.parametrize("ae_title", ["PACS:1", "A@B", "A@B:C", "X@h:1", ":AE", "AE:"])
@pytest.mark.parametrize("host", ["pacs.example.org", "10.0.0.7", "::1"])
def test_a_node_reads_back_from_what_it_writes(ae_title, host):
    """AE titles may hold ':' and '@' (any printable ASCII but the backslash): ``str(node)``, what results.json
    records, parses back as the same node, and an IPv6 host keeps its colons."""
    node = DicomNode(ae_title, host, 104)
    assert parse_dicom_node(str(node)) == node


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("127.0.0.1:4242", r"DICOM node '127.0.0.1:4242' has no AE title: write it as HOST:PORT:AET or AET@HOST:PORT"),
        ("@127.0.0.1:4242", r"has no AE title: write it as HOST:PORT:AET"),
        ("ORTHANC", r"DICOM node 'ORTHANC' is not a node address: write it as HOST:PORT:AET or AET@HOST:PORT"),
        ("127.0.0.1:http:ORTHANC", r"the port of DICOM node '127.0.0.1:http:ORTHANC' must be a number in 1..65535, got 'http'"),
        ("127.0.0.1:70000:ORTHANC", r"DicomNode.port must be an integer in 1..65535, got 70000"),
        ("127.0.0.1:4242:A_VERY_LONG_AE_TITLE", r"DicomNode.ae_title must be an AE title of at most 16 characters, got 'A_VERY_LONG_AE_TITLE'"),
        ("127.0.0.1:4242:OR\\TH", r"DicomNode.ae_title must be printable ASCII without a backslash"),
        ("pacs host:4242:ORTHANC", r"DicomNode.host must be a host name or IP address .*got 'pacs host'"),
    ],
)
def test_a_bad_node_says_what_is_wrong(text, message, app_yaml):
    with pytest.raises(ValueError, match=message):
        parse_dicom_node(text)
    # as a setting, the error also names the setting and its variable
    with pytest.raises(ValueError, match=r"publish_dicom \(MONAI_CIR_PUBLISH_DICOM\): .*" + message):
        AppSettings.resolve(app_yaml=app_yaml, environ={"MONAI_CIR_PUBLISH_DICOM": text})


def test_a_node_is_checked_when_made():
    with pytest.raises(ValueError, match=r"DicomNode.port must be an integer in 1..65535, got '4242'"):
        DicomNode("ORTHANC", "127.0.0.1", "4242")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"DicomNode.ae_title must be an AE title of 1..16 characters, got ''"):
        DicomNode("", "127.0.0.1", 4242)
    with pytest.raises(ValueError, match=r"DicomNode.ae_title must be printable ASCII .*got 'OR\\nTH'"):
        DicomNode("OR\nTH", "127.0.0.1", 4242)
    with pytest.raises(ValueError, match=r"DicomNode.host must be a host name or IP address .*got ''"):
        DicomNode("ORTHANC", "", 4242)
