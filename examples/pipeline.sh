#!/usr/bin/env bash
# The demo pipeline (`unlearnctl demo`) as plain CLI calls — the CI use case.
#
#   examples/pipeline.sh [OUT]              # the demo's recipe (about 15 minutes on 2 CPU cores)
#   QUICK=1 examples/pipeline.sh out        # tiny sizes: checks the wiring in a few minutes, numbers mean nothing
#   METHODS="siss dimum" examples/pipeline.sh out
#
# Every step writes an ordinary file into OUT; a step whose output exists is skipped (delete a file to redo
# it and what follows). Gates (`evaluate --gate`, exit 3 when one fails) are the CI contract:
#   * every unlearned model:  forget_rate <= FORGET_MAX, FID at most QUALITY_SLACK worse than the base's
#   * every attacked model:   forget_rate <= ATTACKED_MAX  (forgetting that survives the relearning attack)
# A failed gate does not stop the run: the report is still written, and the script exits 3 at the end.
set -euo pipefail

OUT=${1:-pipeline-out}
UNLEARNCTL=${UNLEARNCTL:-unlearnctl}
METHODS=${METHODS:-"siss siss-no-is erasediff dimum salun neggrad naive"}
FORGET_CLASS=${FORGET_CLASS:-8}
FORGET_MAX=${FORGET_MAX:-0.10}       # gate on each unlearned model
ATTACKED_MAX=${ATTACKED_MAX:-0.50}   # gate on each attacked model
QUALITY_SLACK=${QUALITY_SLACK:-+50%} # FID may be this much worse than the base's
if [[ "${QUICK:-0}" == 1 ]]; then
  SIZE=tiny TRAIN_STEPS=40 BATCH=32 UNLEARN=(--steps 4) ATTACK_STEPS=4 CURVE_EVERY=4 CURVE_SAMPLES=10 SAMPLES=20 STEPS=4
else  # the demo's recipe (docs/report.md)
  SIZE=small TRAIN_STEPS=1000 BATCH=64 UNLEARN=() ATTACK_STEPS=200 CURVE_EVERY=100 CURVE_SAMPLES=100 SAMPLES=1000 STEPS=25
fi
EVAL=(--num-samples "$SAMPLES" --steps "$STEPS" --quiet)
mkdir -p "$OUT"
cd "$OUT"

gate_failed=0
step() {  # step OUTPUT COMMAND...: run COMMAND unless OUTPUT exists; remember a failed gate (exit 3), stop on anything else
  local output=$1; shift
  if [[ -e "$output" ]]; then echo "reuse   $output"; return 0; fi
  echo "run     $*"
  local rc=0
  "$@" || rc=$?
  if [[ $rc == 3 ]]; then gate_failed=1; elif [[ $rc != 0 ]]; then exit "$rc"; fi
}

# --- class scenario: forget one digit class from a conditional model -------------------------------------
step base.safetensors "$UNLEARNCTL" train --data digits --conditional --size "$SIZE" --steps "$TRAIN_STEPS" \
  --batch-size "$BATCH" --out base.safetensors --quiet
step base.json "$UNLEARNCTL" evaluate --model base.safetensors --forget-class "$FORGET_CLASS" "${EVAL[@]}" \
  --json base.json --grid base.png
step retrain.safetensors "$UNLEARNCTL" unlearn --model base.safetensors --method retrain \
  --forget-class "$FORGET_CLASS" --out retrain.safetensors --quiet
inputs=(base.json)
for method in retrain $METHODS; do
  if [[ $method != retrain ]]; then
    step "$method.safetensors" "$UNLEARNCTL" unlearn --model base.safetensors --method "$method" \
      --forget-class "$FORGET_CLASS" "${UNLEARN[@]}" --out "$method.safetensors" --quiet
  fi
  step "$method-attacked.safetensors" "$UNLEARNCTL" relearn-attack --model "$method.safetensors" --aux retain \
    --steps "$ATTACK_STEPS" --batch-size "$BATCH" --curve-every "$CURVE_EVERY" --curve-samples "$CURVE_SAMPLES" \
    --curve-sample-steps "$STEPS" --curve-json "$method-curve.json" --out "$method-attacked.safetensors" --quiet
  step "$method.json" "$UNLEARNCTL" evaluate --model "$method.safetensors" --forget-class "$FORGET_CLASS" "${EVAL[@]}" \
    --json "$method.json" --grid "$method.png" \
    --gate "forget_rate<=$FORGET_MAX" --gate "fid<=$QUALITY_SLACK" --baseline base.json
  step "$method-attacked.json" "$UNLEARNCTL" evaluate --model "$method-attacked.safetensors" \
    --forget-class "$FORGET_CLASS" "${EVAL[@]}" --json "$method-attacked.json" --grid "$method-attacked.png" \
    --gate "forget_rate<=$ATTACKED_MAX"
  inputs+=("$method.json" "$method-attacked.json" "$method-curve.json")
done

# --- canary scenario: forget one memorised training image from an unconditional model ---------------------
# The membership audit of an out-of-distribution canary needs calibration by a model that never saw it:
# the class base was trained on the same digits without the canary.
CANARY_EVAL=(--forget-canary "${EVAL[@]}" --audit-reference base.safetensors)
step canary-base.safetensors "$UNLEARNCTL" train --data digits+canary --unconditional --size "$SIZE" \
  --steps "$TRAIN_STEPS" --batch-size "$BATCH" --out canary-base.safetensors --quiet
step canary-base.json "$UNLEARNCTL" evaluate --model canary-base.safetensors "${CANARY_EVAL[@]}" \
  --json canary-base.json --grid canary-base.png
step canary-siss.safetensors "$UNLEARNCTL" unlearn --model canary-base.safetensors --method siss --forget-canary \
  "${UNLEARN[@]}" --out canary-siss.safetensors --quiet
step canary-siss-attacked.safetensors "$UNLEARNCTL" relearn-attack --model canary-siss.safetensors --aux retain \
  --steps "$ATTACK_STEPS" --batch-size "$BATCH" --curve-every "$CURVE_EVERY" --curve-samples "$CURVE_SAMPLES" \
  --curve-sample-steps "$STEPS" --curve-json canary-siss-curve.json --out canary-siss-attacked.safetensors --quiet
step canary-siss.json "$UNLEARNCTL" evaluate --model canary-siss.safetensors "${CANARY_EVAL[@]}" \
  --json canary-siss.json --grid canary-siss.png --gate "forget_rate<=0.0"
step canary-siss-attacked.json "$UNLEARNCTL" evaluate --model canary-siss-attacked.safetensors "${CANARY_EVAL[@]}" \
  --json canary-siss-attacked.json --grid canary-siss-attacked.png
inputs+=(canary-base.json canary-siss.json canary-siss-attacked.json canary-siss-curve.json)

# --- one table, one report -----------------------------------------------------------------------------------
"$UNLEARNCTL" compare "${inputs[@]}" --markdown comparison.md --csv comparison.csv --report report.html --quiet
echo "report: $OUT/report.html"
if [[ $gate_failed == 1 ]]; then
  echo "at least one gate failed (see 'gate failed:' lines above)" >&2
  exit 3
fi
