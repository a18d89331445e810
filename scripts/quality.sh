#!/usr/bin/env bash
# The answer-quality table of docs/QUALITY.md: rlmbox eval on sniah and oolong with the local models,
# methods base and rlm, rlm with each system prompt, every model call recorded so that the table can be
# re-scored offline (--replay).
#
#   scripts/quality.sh [OUT]          default OUT: quality-runs
#
# Settings (environment): MODELS (default "qwen2.5-coder-1.5b qwen2.5-coder-0.5b"), PROMPTS (default
# "examples brief"), SUITES (default "sniah oolong"), LENGTHS (default 512,2k,8k), N (default 5), WINDOW
# (tokens per request, default 2048: the largest length is four times it). Resumable: a second run skips the
# tasks already in OUT and answers recorded calls from OUT/cache-MODEL.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rlmbox="${RLMBOX:-$repo/.venv/bin/rlmbox}"
out="${1:-quality-runs}"
models="${MODELS:-qwen2.5-coder-1.5b qwen2.5-coder-0.5b}"
prompts="${PROMPTS:-examples brief}"
suites="${SUITES:-sniah oolong}"
lengths="${LENGTHS:-512,2k,8k}"
n="${N:-5}"
window="${WINDOW:-2048}"
parallel=2

trap '"$rlmbox" local-model stop >/dev/null 2>&1 || true' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bash "$repo/scripts/local-model.sh" $models
mkdir -p "$out"
for model in $models; do
    # Two slots of WINDOW tokens each: two requests are decoded at once (llm_query_batched, two tasks).
    flags="$("$rlmbox" local-model start --model "$model" --port 0 --parallel "$parallel" \
        --ctx-size $((window * parallel)))"
    read -r -a model_flags <<<"$flags"
    common=(
        "${model_flags[@]}" --root-window "$window" --sub-window "$window"
        --completion-kwargs '{"temperature": 0, "max_tokens": 400}'
        --max-iterations 8 --max-time 900 --concurrency "$parallel"
        --lengths "$lengths" --n "$n" --cache "$out/cache-$model" --resume
    )
    for suite in $suites; do
        RLMBOX_API_KEY=local "$rlmbox" eval "${common[@]}" --suite "$suite" --method base \
            --out "$out/$model/base/$suite"
        for prompt in $prompts; do
            RLMBOX_API_KEY=local "$rlmbox" eval "${common[@]}" --suite "$suite" --method rlm \
                --prompt "$prompt" --out "$out/$model/rlm-$prompt/$suite"
        done
    done
    "$rlmbox" local-model stop
done
