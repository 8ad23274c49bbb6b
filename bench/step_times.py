"""Step time of every unlearning method against naive deletion, and our SISS step against the reference's.

Table 1: one full step of the shared loop (draws, forward(s), backward(s), gradient surgery, clip, AdamW)
for every fine-tuning method on the same model and batch, as a ratio to ``naive`` (one forward + one
backward). SISS's single-forward design should cost ≤ 1.8× naive with exact gradient scaling, and less
than ``siss-no-is``.

Table 2: our SISS step against a straightforward re-implementation of the reference training step (two
``backward`` calls with ``retain_graph``, per-parameter gradient copies in dicts, the norm of ``g_a`` by a
Python loop): the resulting gradients (before and after the clip) and the time. Plus the opt-in fast mode
(``--refresh-every K``): the factor C/‖g_a‖ measured every K steps, one backward pass in between.

Table 3: the same steps under ``--precision bf16`` (autocast) against fp32.

    nice -n 5 .venv/bin/python bench/step_times.py                  # class scenario, batch 64, 12 rounds
    nice -n 5 .venv/bin/python bench/step_times.py --batch-size 128 --rounds 20
"""

from __future__ import annotations

import argparse
import copy

import torch

from common import (CLASS_MODEL, build_runner, fine_tuning_methods, interleaved, load_average, loop_step, machine, peak_rss_mb,
                    ratio_cell, table)



def reference_siss_step(runner, optimizer, grad_clip: float = 1.0) -> dict[str, torch.Tensor]:
    """The reference code's SISS step, written the straightforward way; returns the pre-clip gradients."""
    model, C = runner.ctx.unet, runner.C
    terms = runner.terms()  # the same single forward pass and importance weights
    L_x, L_a = terms["L_x"], terms["L_a"]
    optimizer.zero_grad()
    L_x.backward(retain_graph=True)
    grads_x = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    optimizer.zero_grad()
    L_a.backward()
    grads_a = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    norm_a = 0.0
    for g in grads_a.values():
        norm_a += g.norm().item() ** 2
    norm_a = norm_a ** 0.5
    for name, p in model.named_parameters():
        zero = torch.zeros_like(p)
        p.grad = grads_x.get(name, zero) - (C / norm_a) * grads_a.get(name, zero)
    before_clip = {name: p.grad.clone() for name, p in model.named_parameters()}
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return before_clip


def gradient_agreement(runner, optimizer) -> tuple[float, float]:
    """Max |ours − reference| of the pre-clip gradient, absolute and relative to max |reference|, from
    identical weights, optimizer state and random draws."""
    saved = (copy.deepcopy(runner.ctx.unet.state_dict()), runner.ctx.generator.get_state(),
             copy.deepcopy(optimizer.state_dict()))
    reference = reference_siss_step(runner, optimizer)
    runner.ctx.unet.load_state_dict(saved[0])
    runner.ctx.generator.set_state(saved[1])
    optimizer.load_state_dict(saved[2])
    optimizer.zero_grad(set_to_none=True)
    runner.step()
    ours = {name: p.grad for name, p in runner.ctx.unet.named_parameters()}
    diff = max(float((ours[k] - reference[k]).abs().max()) for k in reference)
    scale = max(float(g.abs().max()) for g in reference.values())
    return diff, diff / scale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(CLASS_MODEL))
    parser.add_argument("--forget-class", default="8")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=12, help="interleaved rounds (median over rounds)")
    parser.add_argument("--refresh", default="4,10", help="fast-mode intervals K to time")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-precision", dest="precision", action="store_false", help="skip the bf16 table")
    args = parser.parse_args(argv)

    from unlearnctl.checkpoint import load_checkpoint
    from unlearnctl.data import ForgetSpec, load_recorded_data, resolve_forget

    torch.manual_seed(0)
    checkpoint = load_checkpoint(args.model)
    split = load_recorded_data(checkpoint.data)
    forget_set = resolve_forget(ForgetSpec(classes=(args.forget_class,)), split)
    print(f"# step times — {checkpoint.path.name}, forget class {args.forget_class}, batch {args.batch_size}, "
          f"device {args.device}\n# machine: {machine()}")

    def runner(method, params=None):
        return build_runner(checkpoint, split, forget_set, method, params, batch_size=args.batch_size, device=args.device)

    # Table 1 ------------------------------------------------------------------------------------------------
    methods = fine_tuning_methods()
    runners = {m: runner(m) for m in methods}
    cases = {m: (lambda r=r: loop_step(*r)) for m, r in runners.items()}
    timing = interleaved(cases, args.rounds, reference="naive")
    rows = [[m, timing[m]["median_s"] * 1000, ratio_cell(timing[m])] for m in methods]
    print(table(f"Table 1 — one loop step vs naive (median of {args.rounds} interleaved rounds; load {load_average()})",
                ["method", "ms / step", "× naive [95%]"], rows))

    # Table 2 ------------------------------------------------------------------------------------------------
    ours = runners["siss"]
    ref = runner("siss")
    diff, rel = gradient_agreement(*runner("siss"))
    ks = [int(k) for k in args.refresh.split(",") if k]
    fast = {k: runner("siss", {"refresh_every": k}) for k in ks}
    per = max([1, *ks])  # time whole refresh cycles: the refresh step is one of every K
    cases = {"reference": lambda: [reference_siss_step(*ref) for _ in range(per)],
             "ours (exact)": lambda: [loop_step(*ours) for _ in range(per)],
             **{f"ours, --refresh-every {k}": (lambda r=r: [loop_step(*r) for _ in range(per)]) for k, r in fast.items()}}
    timing = interleaved(cases, max(3, args.rounds // 2), reference="reference")
    rows = [[name, timing[name]["median_s"] / per * 1000, ratio_cell(timing[name], speedup=True)] for name in cases]
    print(table(f"Table 2 — SISS step vs the reference step (median of {max(3, args.rounds // 2)} interleaved rounds of {per} steps; "
                f"load {load_average()})", ["step", "ms / step", "speed-up vs reference [95%]"], rows))
    print(f"\ngradient (before clip), ours exact vs reference: max |diff| = {diff:.2e} ({rel:.2e} of max |g|)")

    # Table 3 ------------------------------------------------------------------------------------------------
    if args.precision:
        from unlearnctl.runtime import Runtime

        def at(precision, r):
            r[0].ctx.denoiser.runtime = Runtime.create(args.device, precision)  # this runner's forwards at `precision`
            return lambda: loop_step(*r)

        cases = {f"{m} {p}": at(p, runner(m)) for m in fine_tuning_methods() for p in ("fp32", "bf16")}
        timing = interleaved(cases, max(3, args.rounds // 2), reference="naive fp32")
        rows = [[name, timing[name]["median_s"] * 1000, ratio_cell(timing[name])] for name in cases]
        print(table(f"Table 3 — --precision on this device (median of {max(3, args.rounds // 2)} interleaved rounds; "
                    f"load {load_average()})", ["step", "ms / step", "× naive fp32 [95%]"], rows))
    print(f"peak RSS of this benchmark: {peak_rss_mb():.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
