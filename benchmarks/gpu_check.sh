#!/usr/bin/env bash
# The GPU check of the Backends section, as one script. In order of what is least known: whole default
# 1024 px runs on JAX (cold compilation cache, cold without a seed, warm cache; each stopped
# after a limit and its start-up broken down from run.json), every feature on torch then jax at 128 px (the
# same --random-seed twice, --tile, --count, --init-image, --resume, a NaN stop), the per-iteration
# benchmark at 512, 1024 and 2048 px, an out-of-memory stop, a tiled evaluation (whole vs tiled at 1024 px),
# an 8192 px tiled run of 3 iterations within 30% of the GPU's memory, torch's benchmark at 512 and 1024 px.
# The whole of it takes longer than a 15-minute lease: DEADLINE skips the steps that would start after it,
# END (seconds) cuts the last one short. Run from the repo root:
#
#     WEIGHTS=DIR DEADLINE=430 END=570 FEATURES_jax="resume nan" bash benchmarks/gpu_check.sh [quick] \
#         2>&1 | tee $OUT/log.txt
#
# WEIGHTS: a folder with vgg_normalised.pth (whole, or trimmed: python3 vgg16.py --output DIR/...);
# quick: small sizes, for trying the script on a CPU. Where the GPU machine cannot fetch packages,
# carry the wheels of keras, namex and optree in .whl/: they are installed into /tmp/site first.
# Never `pkill -f synthesize.py` in the same command line: it matches the shell running it.
QUICK=${1:-}
WEIGHTS=${WEIGHTS:-model_data}
if [ -d .whl ] && ! python3 -c "import keras" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONUNBUFFERED=1 TEXTURE_JAX_CACHE=/tmp/jaxcache TF_CPP_MIN_LOG_LEVEL=2
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
rm -rf /tmp/f /tmp/jaxcache /tmp/jaxcache-*  # a rerun on the same machine starts cold again
D="-d $WEIGHTS --network vgg19"
if [ -n "$QUICK" ]; then D="$D -p reflect"; SIZES="128 256"; WHOLE=128; SMALL=64; BIG=512; ITERS=3; else SIZES="512 1024 2048"; WHOLE=1024; SMALL=128; BIG=2048; ITERS=10; fi
# A device lease is short: each step is held to LIMIT (given before it) or STEP_LIMIT seconds, and to what is
# left of END; none starts after DEADLINE. A step deaf to SIGTERM is killed 20 s later.
STEP_LIMIT=${STEP_LIMIT:-240}; DEADLINE=${DEADLINE:-100000}; END=${END:-100000}
step() {
  if [ $SECONDS -gt $DEADLINE ]; then echo "=== skipped (past ${DEADLINE} s): $*"; return; fi
  local limit=${LIMIT:-$STEP_LIMIT} t0=$SECONDS
  [ $((END - SECONDS - 25)) -lt $limit ] && limit=$((END - SECONDS - 25))
  if [ $limit -lt 5 ]; then echo "=== skipped (END at ${END} s is near): $*"; return; fi
  echo "=== $*"; timeout -k 20 $limit "$@"; echo "--- rc=$? $((SECONDS - t0)) s"
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
KERAS_BACKEND=jax python3 -c "import keras, jax, torch; print('keras', keras.__version__, 'jax', jax.__version__, jax.devices(), 'torch', torch.__version__)"
export KERAS_BACKEND=jax
echo "=== whole default runs at $WHOLE px: cold cache, cold without a seed, warm cache"
# Each is stopped by SIGTERM after its limit; it saves what it has, and its start-up is still broken down.
# A --random-seed (the benchmark's 0) sets --xla_gpu_deterministic_ops, which limits the kernels XLA may
# pick and autotune; the run without a seed compiles as a user's default run (no seed) does.
# The step's LIMIT leaves bench.py time for the run's own 60 s to save after SIGTERM, and to report.
W="--no-table --whole $WHOLE --runs 1 --extra"
TEXTURE_JAX_CACHE=/tmp/jaxcache-whole LIMIT=240 \
  step python3 benchmarks/bench.py --whole-limit 150 $W "$D" --json $OUT/whole_cold.json
TEXTURE_JAX_CACHE=/tmp/jaxcache-noseed LIMIT=210 \
  step python3 benchmarks/bench.py --whole-seed none --whole-limit 120 $W "$D" --json $OUT/whole_noseed.json
TEXTURE_JAX_CACHE=/tmp/jaxcache-whole LIMIT=150 \
  step python3 benchmarks/bench.py --whole-limit 60 $W "$D" --json $OUT/whole_warm.json
unset KERAS_BACKEND
# Every feature at $SMALL px on each backend; FEATURES_jax / FEATURES_torch choose (plain is the others' base).
S="-s examples/gravel.png $D -ow $SMALL -m 12 -q --random-seed 3 -p reflect -o 3"
ALL="plain plain2 tile count init resume nan"
has() { [[ "$features" == *" $1 "* ]]; }  # the features asked of this backend
for b in torch jax; do
  features=FEATURES_$b; features=" plain ${!features:-$ALL} "
  step python3 synthesize.py $S --backend $b --output-dir /tmp/f/$b/plain
  a=$(ls /tmp/f/$b/plain/*/final_F0000.png 2>/dev/null)
  [ -n "$a" ] || features=$(echo "$features" | sed 's/ plain2 / /; s/ init / /; s/ resume / /')  # need its result
  if has plain2; then
    step python3 synthesize.py $S --backend $b --output-dir /tmp/f/$b/plain2
    c=$(ls /tmp/f/$b/plain2/*/final_F0000.png 2>/dev/null)
    cmp -s "$a" "$c" && echo "$b: same --random-seed gives identical PNGs" || echo "$b: PNGs DIFFER between identical runs"
  fi
  has tile && step python3 synthesize.py $S --backend $b --tile --output-dir /tmp/f/$b/tile
  has count && step python3 synthesize.py $S --backend $b -c 2 --if-order 1 --if-shift 2 --output-dir /tmp/f/$b/count
  has init && step python3 synthesize.py $S --backend $b --init-image "$a" --output-dir /tmp/f/$b/init
  has resume && step python3 synthesize.py --resume "$(dirname "$a")" -m 16 -q --output-dir /tmp/f/$b/resume
  has nan && step python3 synthesize.py $S --backend $b --mul 1e38 --output-dir /tmp/f/$b/nan
  python3 - "$b" <<'PY'
import json, glob, sys
for path in sorted(glob.glob(f"/tmp/f/{sys.argv[1]}/*/*/run.json")):
    r = json.load(open(path))
    print(path.split("/")[4], r["status"], r["backend"], r["device"], r["iterations"], "%.4g" % (r["final_loss"] or 0),
          r.get("seam_ratios"), r.get("timings"))
PY
done
KERAS_BACKEND=jax step python3 benchmarks/bench.py --sizes $SIZES --iterations $ITERS --extra "$D" --json $OUT/bench_jax.json
cp /tmp/f/torch/plain/*/final_F0000.png $OUT/final_torch.png 2>/dev/null
echo "=== out of memory (JAX limited to 2% of the GPU)"
step env XLA_PYTHON_CLIENT_MEM_FRACTION=0.02 python3 synthesize.py -s examples/gravel.png $D -ow $BIG -m 3 --schedule plain --backend jax --force -q --output-dir /tmp/f/oom
echo "=== tiled loss: evaluations whole and tiled, and an 8192 px run held to 30% of the GPU (JAX)"
export KERAS_BACKEND=jax
step python3 benchmarks/bench.py --no-table --evaluate $WHOLE --untiled-too --max-memory 2G --extra "$D" --json $OUT/tiled_eval.json
TILED=8192; [ -n "$QUICK" ] && TILED=256
XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 step python3 synthesize.py -s examples/gravel.png $D -ow $TILED -m 3 --schedule plain -q --output-dir /tmp/f/tiled
[ -d /tmp/f/tiled ] && python3 -c "import json, glob; r = json.load(open(glob.glob('/tmp/f/tiled/*/run.json')[0])); print(r['status'], r['device'], r['memory'], [s['iteration_seconds'] for s in r['stages']], r['loss_history'])"
unset KERAS_BACKEND
echo "=== torch, per iteration (eager kernels: slower than jax on a GPU)"
KERAS_BACKEND=torch step python3 benchmarks/bench.py --sizes $(echo $SIZES | cut -d' ' -f1-2) --iterations $ITERS --extra "$D" --json $OUT/bench_torch.json
