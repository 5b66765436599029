#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, over the binaries tools/gpu/build.sh
# staged in .gpu/: every GPU check, then the benchmarks, logging to $OUT (or ./gpu-out).
# Each step has its own time limit; a failed step is reported and the next one still runs.
set -uo pipefail
# Step logs and the disassembly go to a work folder, packed into one archive at the end (the
# device tool returns at most 8 files); the summary files go to $OUT itself.
final="${OUT:-gpu-out}"
out="$(mktemp -d)"
mkdir -p "$final"
export KVSTORE_REQUIRE_GPU=1 KVSTORE_REQUIRE_NVRTC=1 RUST_BACKTRACE=1
status=0
step() { # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  printf '\n== %s (%s)\n' "$name" "$(date -u +%H:%M:%S)" | tee -a "$out/log.txt"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$out/$name.txt" 2>&1
  local rc=$?
  tail -n 25 "$out/$name.txt" | tee -a "$out/log.txt"
  echo "-- $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$out/log.txt"
  [ $rc -eq 0 ] || status=1
}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$out/log.txt"
bin=.gpu/bin
# NCCL comes with PyTorch's Python packages as libnccl.so.2; cudarc looks for libnccl.so.
nccl_dir=$(python3 -c 'import nvidia.nccl as m; print(list(m.__path__)[0])' 2>/dev/null)/lib
if [ -e "$nccl_dir/libnccl.so.2" ]; then
  mkdir -p /tmp/nccl && ln -sf "$nccl_dir/libnccl.so.2" /tmp/nccl/libnccl.so
  export LD_LIBRARY_PATH="/tmp/nccl:${LD_LIBRARY_PATH:-}" KVSTORE_REQUIRE_NCCL=1
  echo "NCCL: $nccl_dir/libnccl.so.2" | tee -a "$out/log.txt"
fi
step compile 30 $bin/compile
# --fmad=false leaves no FFMA in any kernel but Adam's, whose IEEE division and square root
# are NVIDIA's correctly rounded FFMA sequences (not contractions of our arithmetic).
step fma 40 bash -c "KVSTORE_CUDA_DUMP_CUBIN=$out/kernels.cubin $bin/kvstore-gpu-bench --n 1024 --rows 64 --ids 16 --reps 1 >/dev/null \
  && cuobjdump -sass $out/kernels.cubin > $out/kernels.sass \
  && awk '/Function :/{f=\$3} /FFMA/{c[f]++} END{for(k in c) print \"FFMA in\", k, c[k]}' $out/kernels.sass \
  && echo \"128-bit loads: \$(grep -c 'LDG.E.128' $out/kernels.sass) stores: \$(grep -c 'STG.E.128' $out/kernels.sass)\" \
  && ! awk '/Function :/{f=\$3} /FFMA/ && f !~ /adam/ {bad=1} END{exit !bad}' $out/kernels.sass"
step device_ops 60 env PROPTEST_CASES="${DEVICE_CASES:-500}" $bin/device_ops
step device_store 90 env PROPTEST_CASES="${DEVICE_CASES:-500}" $bin/device_store
step equivalence 120 env PROPTEST_CASES="${EQUIVALENCE_CASES:-3000}" $bin/equivalence r77
step bench 150 $bin/kvstore-gpu-bench --sweep --out "$out/kvstore_bench.json"
step torch 200 env PYTHONUNBUFFERED=1 python3 .gpu/torch_bench.py --out "$out/torch_bench.json"
# kvstore's cubin (dumped by the fma step) against torch.compile in one process, interleaved.
step paired 150 env PYTHONUNBUFFERED=1 python3 .gpu/paired_bench.py --cubin "$out/kernels.cubin" --out "$out/paired.json"
python3 .gpu/report.py "$out/kvstore_bench.json" "$out/torch_bench.json" | tee "$out/report.md"
# The results so far reach $OUT before the slower diagnostics below, in case the run is cut off.
cp "$out/log.txt" "$out/report.md" "$final/" 2>/dev/null
cp "$out"/*.json "$final/" 2>/dev/null
# compute-sanitizer (where the machine's runtime allows it): out-of-bounds or misaligned
# accesses and races inside the kernels, on a few cases of each suite.
if command -v compute-sanitizer >/dev/null && [ "${SANITIZE:-1}" = 1 ]; then
  for tool in memcheck racecheck; do
    # NCCL's own start-up probes kernel images and fails API calls on purpose: not ours.
    step "sanitize_${tool}_ops" 60 env PROPTEST_CASES=4 compute-sanitizer --tool $tool --error-exitcode 9 $bin/device_ops --skip nccl
  done
  step sanitize_memcheck_store 60 env PROPTEST_CASES=8 compute-sanitizer --tool memcheck --error-exitcode 9 $bin/device_store
fi
# Nsight Compute on kvstore's K = 4 reduce and on torch.compile's, for what the timings cannot
# say (achieved DRAM bandwidth, loads in flight, occupancy); clocks left as they are.
ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if [ -n "$ncu_bin" ] && [ "${NCU:-1}" = 1 ]; then
  sections="--section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats"
  step ncu_kvstore 45 "$ncu_bin" --clock-control none -k regex:reduce8 -c 2 $sections $bin/kvstore-gpu-bench --reps 1
  step ncu_torch 90 env PYTHONUNBUFFERED=1 "$ncu_bin" --clock-control none -k regex:triton -c 2 $sections python3 .gpu/torch_bench.py --cases reduce --out /dev/null
fi
echo "== done, status $status" | tee -a "$out/log.txt"
cp "$out/log.txt" "$out/report.md" "$final/" 2>/dev/null
cp "$out"/*.json "$final/" 2>/dev/null
tar czf "$final/gpu-run.tgz" -C "$out" .
exit $status
