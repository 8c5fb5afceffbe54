#!/usr/bin/env bash
# The engine on a lent GPU, in one device call of under 8 minutes (docs/engine.md, "CUDA").
#
# Here, first (builds the wheels the GPU image lacks, i2i's own from this tree, and copies
# the maps data; both folders are git-excluded and travel as carried paths, 53 MB of 64 MiB):
#     bash benchmarks/gpu_check.sh --prepare
# Then one device call, from the repository root, carrying .whl and .gpu, timeout 480 s:
#     bash benchmarks/gpu_check.sh
# Sections, each under its own time limit so that one failure or overrun loses only itself:
#   1. the CUDA-only tests (tests/test_engine.py -k cuda)
#   2. the engine probe for the flagship at the full schedule's length (long enough that a
#      compile is tried besides the step's CUDA graph): benchmarks/engine_probe.py
#   3. i2i bench speed on cuda, batch 1: baseline (reference), tuned (static fast choice) and
#      default (section 2's cached choice, as `i2i run` would take it)
#   4. 2,000 training steps of the flagship at the defaults on the maps data
#   5. the quality check, reference and fast, 2 seeds each, trained side by side on the GPU,
#      outputs saved for FID/KID here:
#          .venv/bin/python benchmarks/quality_check.py --score-translations DIR
#   6. i2i bench speed on cuda, batch 8 (eager: the compiled step is section 2's question)
# Everything lands in $OUT: log, records.tar (speed.jsonl, engine cache, the run's log,
# quality runs.json) and one q_<run>.tar of val outputs per quality run.
set -u -o pipefail

if [ "${1:-}" = "--prepare" ]; then
    set -e
    rm -rf .whl && mkdir -p .whl .gpu/maps
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
        -d .whl pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
        typing_extensions==4.16.0 albumentations==2.0.8 albucore==0.0.24 simsimd==6.5.16 stringzilla==5.3.2 \
        torch-fidelity==0.4.0
    .venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w .whl .
    rm -rf build i2i.egg-info
    rm -rf .gpu/maps/train .gpu/maps/val
    cp -r ../shared/data/maps/train ../shared/data/maps/val .gpu/maps/
    du -sh .whl .gpu
    exit 0
fi

export PYTHONUNBUFFERED=1 I2I_CACHE=/tmp/i2i-cache
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
DATA=.gpu/maps
DEADLINE=${DEADLINE:-430}  # seconds for all sections; packing the records follows
started=$SECONDS

section() {  # section NAME SECONDS COMMAND...: COMMAND under a time limit (never past the deadline), its status
    local name=$1 limit=$2 status
    shift 2
    limit=$(( limit < DEADLINE - (SECONDS - started) ? limit : DEADLINE - (SECONDS - started) ))
    if [ "$limit" -lt 10 ]; then
        echo "=== $name: skipped, the check's deadline is near"
        return 124
    fi
    echo "=== $name (limit ${limit} s; $((SECONDS - started)) s into the check)"
    timeout --kill-after=5 "$limit" "$@"
    status=$?
    echo "=== $name: exit $status at $((SECONDS - started)) s"
    return $status
}

main() {
    nvidia-smi -L
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return
    export PYTHONPATH=/tmp/site
    python3 -c "import torch, i2i; print('torch', torch.__version__, torch.cuda.get_device_name(), 'i2i', i2i.__version__)" || return

    section "CUDA tests" 55 python3 -m pytest -q -p no:cacheprovider tests/test_engine.py -k "cuda and not slow"

    # 300 training pairs: 366 + 365 epochs is the full maps schedule's length (219,300 steps)
    local schedule=(--set "data.root=$DATA" --set train.epochs=366 --set train.epochs_decay=365)
    if ! section "engine probe, full schedule" 125 python3 benchmarks/engine_probe.py recipes/pix2pix_maps.yaml \
        --set train.device=cuda "${schedule[@]}"; then
        schedule+=(--set train.compile=false)  # no cached choice: the bench must not probe a compile again
    fi

    section "bench speed, batch 1" 80 python3 -m i2i bench speed recipes/pix2pix_maps.yaml --device cuda \
        --steps 50 --warmup 10 --repeats 5 --no-compile-inference --results "$OUT/speed.jsonl" "${schedule[@]}"

    section "2,000 steps at the defaults" 60 python3 -m i2i run recipes/pix2pix_maps.yaml --out /tmp/run2000 \
        --no-tensorboard --set "data.root=$DATA" --set data.download=false --set train.max_steps=2000 \
        --set train.log_every=100 --set train.sample_every=2000 --set train.checkpoint_every=2000

    section "quality check" 70 python3 benchmarks/quality_check.py --data "$DATA" --steps 300 --device cuda \
        --parallel --out /tmp/quality_runs --save-translations /tmp/quality

    section "bench speed, batch 8" 35 python3 -m i2i bench speed recipes/pix2pix_maps.yaml --device cuda \
        --steps 20 --warmup 5 --repeats 3 --no-compile-inference --results "$OUT/speed.jsonl" \
        --set "data.root=$DATA" --set train.batch_size=8 --set train.compile=false
}

main 2>&1 | tee "$OUT/log"
mkdir -p /tmp/records
cp "$OUT/speed.jsonl" /tmp/run2000/log.jsonl /tmp/quality/runs.json /tmp/records/ 2>/dev/null
cp "$I2I_CACHE"/engine/*.json /tmp/records/ 2>/dev/null
rm -f "$OUT/speed.jsonl"
tar -C /tmp/records -cf "$OUT/records.tar" .
for run in /tmp/quality/*-seed*; do
    [ -d "$run" ] && tar -C /tmp/quality -cf "$OUT/q_$(basename "$run").tar" "$(basename "$run")"
done
ls -la "$OUT" | tee -a "$OUT/log"
echo "gpu check done in $((SECONDS - started)) s" | tee -a "$OUT/log"
