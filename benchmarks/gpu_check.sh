#!/usr/bin/env bash
# The engine on a lent GPU, in one device call of under 9 minutes (docs/engine.md, "CUDA";
# issue 22): one line of benchmarks/results/gpu.jsonl.
#
# Here, first, after the last commit that should be measured (builds the wheels the GPU image
# lacks, i2i's own from this tree, copies the maps data and notes the commit; both folders
# are git-excluded and travel as carried paths, about 53 MB of 64 MiB):
#     bash benchmarks/gpu_check.sh --prepare
# Then one device call, from the repository root, carrying .whl and .gpu, timeout_s 570:
#     bash benchmarks/gpu_check.sh
# Then here, on what came back (FID needs the Inception weights, which the GPU lacks):
#     .venv/bin/python benchmarks/gpu_record.py score FILES_AT --data ../shared/data/maps
# Sections, each under its own time limit so that one failure or overrun loses only itself:
#   1. the CUDA-only engine tests (tests/test_engine.py -k cuda)
#   2. graph == eager (tests/test_cuda_graph.py): `graph_equals_eager` is true when all 3 pass
#   3. steady input: 10 epochs of the flagship through the trainer's own batches and step,
#      nothing else in the loop (benchmarks/steady_input.py): `steady_min_over_median`
#   4. the long run: the flagship at the defaults on the 300 maps training pairs, with the
#      full maps schedule's length (219,300 steps), stopped by SIGTERM when its time is up
#      (the trainer saves a checkpoint and leaves); steps and steps/s from its log
#   5. val 1..100 translated in train mode by the last checkpoint, as PNGs (gpu_record.py)
#   6. the record: $OUT/gpu.json, every field but long_run_quality
# The engine takes its static choice (I2I_ENGINE_PROBE=0: bf16, channels_last, fused Adam, the
# step as one CUDA graph): the probe may take a tenth of the planned run's time (about 70 s
# here) to try a compile measured at 1.19x, more steps than the compile would give back here.
# GPU_CHECK_DRY_RUN=1: every section at toy size on the CPU (tiny networks, 32x32 crops, 20
# training pairs of ../shared/data/maps, 4 val), with .venv's python, to find a script error
# here rather than on the device.
set -u -o pipefail

if [ "${1:-}" = "--prepare" ]; then
    set -e
    rm -rf .whl && mkdir -p .whl .gpu/maps .git/info
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
    # the device's copy of the tree has no git history
    echo "$(git rev-parse HEAD)$(git diff --quiet HEAD -- i2i benchmarks tests recipes || echo '+uncommitted')" > .gpu/commit
    du -sh .whl .gpu
    exit 0
fi

export PYTHONUNBUFFERED=1 I2I_CACHE=/tmp/i2i-cache I2I_ENGINE_PROBE=0
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ]; then
    PY=.venv/bin/python DATA=/tmp/gpu_check_dry_maps DEADLINE=${DEADLINE:-240} SCALE=0 TRANSLATED=4
    rm -rf "$DATA" && mkdir -p "$DATA/train" "$DATA/val"  # 20 training pairs: an epoch every 20 steps
    for i in $(seq 1 20); do ln -s "$PWD/../shared/data/maps/train/$i.jpg" "$DATA/train/"; done
    for i in $(seq 1 4); do ln -s "$PWD/../shared/data/maps/val/$i.jpg" "$DATA/val/"; done
    COMMIT="$(git rev-parse HEAD) (dry run)"
    TOY=(--set train.device=cpu --set data.load_size=36 --set data.crop_size=32 --set model.generator.params.num_downs=5
         --set model.generator.params.ngf=8 --set model.discriminator.params.ndf=8)
else
    PY=python3 DATA=.gpu/maps DEADLINE=${DEADLINE:-500} SCALE=1 TRANSLATED=100
    COMMIT=$(cat .gpu/commit 2>/dev/null || echo unknown)
    TOY=()
fi
RUN=/tmp/long_run
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
    timeout ${TIMEOUT_FLAGS:---kill-after=5} "$limit" "$@"
    status=$?
    echo "=== $name: exit $status at $((SECONDS - started)) s"
    return $status
}

main() {
    if [ "$SCALE" = 1 ]; then
        nvidia-smi -L
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return
        export PYTHONPATH=/tmp/site
    fi
    $PY -c "import torch, i2i; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'i2i', i2i.__version__)" || return

    section "CUDA engine tests" 60 $PY -m pytest -q -p no:cacheprovider tests/test_engine.py -k "cuda and not slow"

    local graph=false
    section "graph == eager" 60 $PY -m pytest -q -p no:cacheprovider -rs tests/test_cuda_graph.py -k graphed_step_equals \
        | tee /tmp/graph_tests.txt
    grep -Eq '^3 passed in' /tmp/graph_tests.txt && graph=true
    echo "graph_equals_eager: $graph"

    # 300 training pairs: 366 + 365 epochs is the full maps schedule's length (219,300 steps)
    local flagship=(recipes/pix2pix_maps.yaml --set "data.root=$DATA" --set data.download=false
                    --set train.epochs=366 --set train.epochs_decay=365 "${TOY[@]}")
    section "steady input, 10 epochs" 60 $PY benchmarks/steady_input.py "${flagship[@]}" \
        --epochs $(( SCALE ? 10 : 3 )) --window $(( SCALE ? 100 : 10 )) | tee /tmp/steady.txt
    grep '^{' /tmp/steady.txt | tail -n 1 > "$OUT/steady.json"

    # As long as the deadline allows, keeping 70 s for the translation and the record. SIGTERM
    # makes the trainer save at the next step boundary (seconds: 30 s more before SIGKILL), sent
    # to i2i alone (--foreground): a DataLoader worker killed by it would stop the run unsaved.
    rm -rf "$RUN"
    TIMEOUT_FLAGS="--foreground --kill-after=30" section "long run at the defaults" $(( DEADLINE - (SECONDS - started) - 70 - 30 )) \
        $PY -m i2i run "${flagship[@]}" --out "$RUN" --no-tensorboard --quiet --set train.log_every=100
    [ -f "$RUN/log.jsonl" ] && cp "$RUN/log.jsonl" "$OUT/long_run_log.jsonl"

    section "translate val 1..$TRANSLATED, train mode" 40 $PY benchmarks/gpu_record.py translate "$RUN" --data "$DATA" \
        --out "$OUT/val_train" --limit "$TRANSLATED"

    section "record" 30 $PY benchmarks/gpu_record.py record --out "$OUT/gpu.json" --graph-equals-eager "$graph" \
        --steady "$OUT/steady.json" --run "$RUN" --commit "$COMMIT"
}

main 2>&1 | tee "$OUT/log"
ls -la "$OUT" | tee -a "$OUT/log"
echo "gpu check done in $((SECONDS - started)) s" | tee -a "$OUT/log"
