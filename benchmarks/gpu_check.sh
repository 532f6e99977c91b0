#!/usr/bin/env bash
# GPU check (issue 16): what the CPU-only test machines cannot exercise. One line per check,
# PASS or FAIL, in under 5 minutes on one GPU; exit status 1 if any check failed.
#
#   1. cuda        torch sees a CUDA device
#   2. study       a tiny study (4 cells, 2 generators) through `synthmix run` on an embedded Ray
#                  with resources.gpus_per_worker: 1, segmenter amp and generator amp on: every
#                  cell has its row, and each row names the GPU its Ray Train worker saw
#   3. throughput  benchmarks/train_throughput.py --cuda: steps/s with float16 AMP + channels_last
#                  over fp32 (bare loop), and synthmix's loop with amp over without, as ratios
#   4. generator   dcgan_wgangp trained for a few steps on CUDA with bfloat16 autocast: a complete
#                  artifact, finite losses (the training raises otherwise), seconds per step
#
#   bash benchmarks/gpu_check.sh            # from the repository root, after `make setup TORCH_SPEC=torch`
#   PYTHON=/path/to/python bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
TMP=$(mktemp -d -t synthmix-gpu-check-XXXX)
trap 'rm -rf "$TMP"' EXIT
export RAY_AIR_NEW_OUTPUT=0 PYTHONPATH="$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
failed=0

check() {  # check NAME COMMAND...: one line with the command's last output line
    local name=$1 start=$SECONDS out
    shift
    if out=$("$@" 2>&1); then
        echo "PASS $name ($((SECONDS - start)) s): $(echo "$out" | tail -n 1)"
    else
        echo "FAIL $name ($((SECONDS - start)) s): $(echo "$out" | tail -n 4 | tr '\n' ' ')"
        failed=1
    fi
}

check cuda "$PY" -c "
import torch
assert torch.cuda.is_available(), 'torch sees no CUDA device (a CPU build of torch?)'
print(torch.cuda.get_device_name(0), 'CUDA', torch.version.cuda, 'torch', torch.__version__,
      'bf16' if torch.cuda.is_bf16_supported() else 'no bf16')"

study_check() {
    "$PY" - "$TMP/study" <<'EOF' || return 1
import sys
from pathlib import Path
from tiny_study import tiny_study_yaml
root = Path(sys.argv[1]); root.mkdir()
text = tiny_study_yaml().replace("lr: 0.001", "lr: 0.001\n  amp: true")
text = text.replace("quality_samples: 16}", "quality_samples: 16, amp: true}")
text = text.replace("cpus_per_worker: 1,", "cpus_per_worker: 1, gpus_per_worker: 1,")
assert text.count("amp: true") == 2 and "gpus_per_worker: 1" in text
(root / "tiny.yaml").write_text(text)
EOF
    "$PY" -m synthmix.cli run "$TMP/study/tiny.yaml" --storage "$TMP/study/runs" >"$TMP/study/log" 2>&1 \
        || { tail -n 5 "$TMP/study/log"; return 1; }
    "$PY" - "$TMP/study/runs/tiny" <<'EOF'
import sys
from pathlib import Path
import pandas as pd
rows = pd.concat([pd.read_parquet(p) for p in Path(sys.argv[1], "results").glob("*.parquet")])
assert len(rows) == 4, f"{len(rows)} rows, 4 cells planned"
assert (rows["gpu"] != "").all(), "a row's Ray Train worker saw no GPU"
print(f"{len(rows)} rows, GPU {rows['gpu'].iloc[0]!r}, dice_mean {rows['dice_mean'].mean():.3f}, "
      f"cell wall median {rows['time_cell'].median():.1f} s")
EOF
}
check study study_check

check throughput bash -c "'$PY' benchmarks/train_throughput.py --cuda --steps 200 --repeats 3 --batch-size 32 \
    | grep '^RESULT'"

check generator "$PY" - "$TMP/gen" <<'EOF'
import sys, time
from pathlib import Path
from synthmix.datasets.loader import prepare_split_data
from synthmix.datasets.phantom import write_phantom_dataset
from synthmix.datasets.preprocess import build_preprocess_config
from synthmix.datasets.splits import Split
from synthmix.trainers.context import LocalContext
from synthmix.trainers.generators.artifact import is_complete
from synthmix.trainers.generators.training import GeneratorConfig, train_generator
root = Path(sys.argv[1])
manifest = write_phantom_dataset(root / "phantom", subjects=6, size=64)
ids = [f"sub-{i:03d}" for i in range(6)]
split = Split(fold=0, repeat=0, amount=1.0, train=tuple(ids[:4]), val=(ids[4],), test=(ids[5],), pool=tuple(ids[:4]))
train, *_ = prepare_split_data(manifest, split, build_preprocess_config({"axis": 2}), root / "cache")
config = GeneratorConfig(steps=20, checkpoint_every=10, amp=True, pool_size=64, quality_samples=32)
start = time.perf_counter()
artifact = train_generator(config, train, LocalContext("cuda", checkpoint_root=root / "ckpt"), root / "artifact")
seconds = time.perf_counter() - start
assert is_complete(artifact.path), "incomplete artifact"
print(f"{config.steps} steps at 64x64 in {seconds:.1f} s incl. pool + quality "
      f"({seconds / config.steps:.2f} s/step); swd {artifact.quality.get('swd')}")
EOF

exit $failed
