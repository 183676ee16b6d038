#!/usr/bin/env bash
# Build and parity-check TensorRT engines in the NGC TensorRT image (docker/Dockerfile).
# For every NAME and PRECISION it runs `deploy-attn build NAME --precision PRECISION` in
# the container, which exports first when export/NAME has no ONNX yet and ends with the
# engine parity check. The host's export/ is mounted at /work/export.
#
#   docker/build_engines.sh [--trt 11|10] [NAME...] [fp32|fp16|int8|int8-fp32...] [-- BUILD-OPTIONS...]
#   docker/build_engines.sh                       # mobilenetv2_ca in fp32, fp16 and int8
#   docker/build_engines.sh --trt 10 se int8      # on the TensorRT 10.x image
#   docker/build_engines.sh se fp16 -- --min-batch 1 --opt-batch 8 --max-batch 32
#
# --trt picks the image: 11 (TensorRT 11.2, the default) or 10 (TensorRT 10.13). Prints a
# summary (also written to export/engine-builds.txt); exits 1 when any build or check
# failed, 2 on bad arguments.
set -euo pipefail

usage() { sed -n '2,15s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

cd "$(dirname "${BASH_SOURCE[0]}")/.."

models=()
precisions=()
extra=()
service=engines
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    --trt)
      case "${2:-}" in
        11) service=engines ;;
        10) service=engines-trt10 ;;
        *) echo "build_engines.sh: --trt takes 11 or 10, not '${2:-}'" >&2; exit 2 ;;
      esac
      shift ;;
    fp32 | fp16 | int8 | int8-fp32) precisions+=("$1") ;;
    -*) echo "build_engines.sh: unknown option '$1' (deploy-attn build options go after --)" >&2
        exit 2 ;;
    *) models+=("$1") ;;
  esac
  shift
done
((${#models[@]})) || models=(mobilenetv2_ca)
((${#precisions[@]})) || precisions=(fp32 fp16 int8)

if ! command -v docker >/dev/null; then
  echo "build_engines.sh: docker is not installed (see docker/README.md)" >&2
  exit 2
fi
compose=(docker compose -f docker/compose.yaml)
# compose.yaml runs the container as this user, so what it writes to export/ is yours.
HOST_UID="$(id -u)"
HOST_GID="$(id -g)"
export HOST_UID HOST_GID
mkdir -p export

echo "== building the image (the first time pulls nvcr.io/nvidia/tensorrt: several GB)" >&2
"${compose[@]}" build "${service}"

rows=()
failed=0
for name in "${models[@]}"; do
  for precision in "${precisions[@]}"; do
    echo "== ${name} ${precision}" >&2
    start=${SECONDS}
    if "${compose[@]}" run --rm "${service}" build "${name}" --precision "${precision}" \
        ${extra[@]+"${extra[@]}"}; then
      status=ok
    else
      status="FAILED (exit $?)"
      failed=$((failed + 1))
    fi
    rows+=("$(printf '%-24s %-9s %6ss  %s' "${name}" "${precision}" "$((SECONDS - start))" "${status}")")
  done
done

summary=export/engine-builds.txt
{
  printf '%-24s %-9s %7s  %s\n' model precision time status
  printf '%s\n' "${rows[@]}"
  echo "$((${#rows[@]} - failed)) ok, ${failed} failed (image: ${service}); engines and reports in export/NAME/"
} | tee "${summary}"
exit $((failed > 0 ? 1 : 0))
