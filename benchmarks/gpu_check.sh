#!/usr/bin/env bash
# The GPU check of the Backends section, as one script (about 8 minutes on an H200): the benchmark on JAX
# (512, 1024, 2048 px and a whole default 1024 px run, twice), every feature on jax and torch at 128 px, the
# same --random-seed twice, an out-of-memory stop, a tiled evaluation (whole vs tiled at 1024 px) and an
# 8192 px tiled run of 3 iterations within 30% of the GPU's memory, then torch's benchmark at 512 and 1024 px.
# Run from the repo root:
#
#     WEIGHTS=DIR bash benchmarks/gpu_check.sh [quick]
#
# WEIGHTS: a folder with vgg_normalised.pth (whole, or trimmed: python3 vgg16.py --output DIR/...);
# quick: small sizes, for trying the script on a CPU. Where the GPU machine cannot fetch packages,
# carry the wheels of keras, namex and optree in .whl/: they are installed into /tmp/site first.
QUICK=${1:-}
WEIGHTS=${WEIGHTS:-model_data}
if [ -d .whl ] && ! python3 -c "import keras" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONUNBUFFERED=1 TEXTURE_JAX_CACHE=/tmp/jaxcache TF_CPP_MIN_LOG_LEVEL=2
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
D="-d $WEIGHTS --network vgg19"
if [ -n "$QUICK" ]; then D="$D -p reflect"; SIZES="128 256"; WHOLE=128; SMALL=64; BIG=512; ITERS=3; else SIZES="512 1024 2048"; WHOLE=1024; SMALL=128; BIG=2048; ITERS=10; fi
step() { echo "=== $*"; local t0=$SECONDS; "$@"; echo "--- rc=$? $((SECONDS - t0)) s"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
KERAS_BACKEND=jax python3 -c "import keras, jax, torch; print('keras', keras.__version__, 'jax', jax.__version__, jax.devices(), 'torch', torch.__version__)"
export KERAS_BACKEND=jax
step python3 benchmarks/bench.py --sizes $SIZES --iterations $ITERS --extra "$D" --whole $WHOLE --json $OUT/bench_jax.json
unset KERAS_BACKEND
S="-s examples/gravel.png $D -ow $SMALL -m 12 -q --random-seed 3 -p reflect -o 3"
for b in jax torch; do
  step python3 synthesize.py $S --backend $b --output-dir /tmp/f/$b/plain
  step python3 synthesize.py $S --backend $b --output-dir /tmp/f/$b/plain2
  a=$(ls /tmp/f/$b/plain/*/final_F0000.png); c=$(ls /tmp/f/$b/plain2/*/final_F0000.png)
  cmp -s $a $c && echo "$b: same --random-seed gives identical PNGs" || echo "$b: PNGs DIFFER between identical runs"
  step python3 synthesize.py $S --backend $b --tile --output-dir /tmp/f/$b/tile
  step python3 synthesize.py $S --backend $b -c 2 --if-order 1 --if-shift 2 --output-dir /tmp/f/$b/count
  step python3 synthesize.py $S --backend $b --init-image $a --output-dir /tmp/f/$b/init
  step python3 synthesize.py --resume $(dirname $a) -m 16 -q --output-dir /tmp/f/$b/resume
  step python3 synthesize.py $S --backend $b --mul 1e38 --output-dir /tmp/f/$b/nan
  python3 - "$b" <<'PY'
import json, glob, sys
for path in sorted(glob.glob(f"/tmp/f/{sys.argv[1]}/*/*/run.json")):
    r = json.load(open(path))
    print(path.split("/")[4], r["status"], r["backend"], r["device"], r["iterations"], "%.4g" % (r["final_loss"] or 0), r.get("seam_ratios"))
PY
done
cp /tmp/f/jax/tile/*/tiled_preview.png $OUT/tiled_jax.png 2>/dev/null
cp /tmp/f/torch/plain/*/final_F0000.png $OUT/final_torch.png 2>/dev/null
echo "=== out of memory (JAX limited to 2% of the GPU)"
XLA_PYTHON_CLIENT_MEM_FRACTION=0.02 python3 synthesize.py -s examples/gravel.png $D -ow $BIG -m 3 --schedule plain --backend jax --force -q --output-dir /tmp/f/oom; echo "rc=$?"
echo "=== tiled loss: evaluations whole and tiled, and an 8192 px run held to 30% of the GPU (JAX)"
export KERAS_BACKEND=jax
step python3 benchmarks/bench.py --no-table --evaluate $WHOLE --untiled-too --max-memory 2G --extra "$D" --json $OUT/tiled_eval.json
TILED=8192; [ -n "$QUICK" ] && TILED=256
XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 step python3 synthesize.py -s examples/gravel.png $D -ow $TILED -m 3 --schedule plain -q --output-dir /tmp/f/tiled
python3 -c "import json, glob; r = json.load(open(glob.glob('/tmp/f/tiled/*/run.json')[0])); print(r['status'], r['device'], r['memory'], [s['iteration_seconds'] for s in r['stages']], r['loss_history'])"
unset KERAS_BACKEND
echo "=== torch, per iteration (eager kernels: slower than jax on a GPU)"
KERAS_BACKEND=torch python3 benchmarks/bench.py --sizes $(echo $SIZES | cut -d' ' -f1-2) --iterations $ITERS --extra "$D" --json $OUT/bench_torch.json
