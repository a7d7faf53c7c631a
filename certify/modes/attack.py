"""``attack``: SmoothAdv (`certify.attack.attack_full`): PGD on the soft smoothed classifier through the denoiser
for each radius of ``eps``, then Cohen's PREDICT (n, alpha) at the clean image and at each point found. One line
per image (its attacks share the image's noise streams and resume together). Not packed: each step needs the
last one's gradient."""

from __future__ import annotations

import time
from typing import Any, Mapping

from ..attack import ATTACK_DEFAULTS, AttackResult, attack_full, check_attackable, check_eps
from ..schema import NUMBERS, Option, positive, whole
from . import Mode, register_mode


def _eps(value: Any) -> list[float]:
    check_eps(list(value) if isinstance(value, tuple) else value)
    return list(value)


@register_mode("attack", summary="SmoothAdv, then PREDICT at each adversarial point: empirical robustness")
class Attack(Mode):
    name = "attack"
    summary = ("attack the smoothed classifier (SmoothAdv PGD through f o D), then PREDICT at each adversarial "
               "point: empirical robust accuracy per radius (n = PREDICT's samples at each point)")
    columns = ("idx", "label", "predict", "correct", "time", "eps", "adv_predict", "n")
    uses_n0 = False
    options = (
        Option("eps", "comma-separated L2 radii to attack, ascending, e.g. 0.25,0.5,1", kind=NUMBERS, check=_eps),
        Option("attack_steps", f"PGD steps (default {ATTACK_DEFAULTS['steps']})", kind=int,
               check=whole("attack_steps"), default=ATTACK_DEFAULTS["steps"], flag_name="--steps"),
        Option("attack_step_size", "L2 step length (default 2 eps / steps)", kind=float,
               check=positive("attack_step_size", what="a positive number (or unset: 2 eps / steps)"),
               flag_name="--step-size"),
        Option("attack_m", f"noise draws per gradient estimate (default {ATTACK_DEFAULTS['m']})", kind=int,
               check=whole("attack_m"), default=ATTACK_DEFAULTS["m"], flag_name="--m"),
        Option("attack_restarts", "starts per radius, the first at x, the others random in the ball (default "
               f"{ATTACK_DEFAULTS['restarts']})", kind=int, check=whole("attack_restarts"),
               default=ATTACK_DEFAULTS["restarts"], flag_name="--restarts"),
    )

    def check(self, settings) -> None:
        if not settings.options.eps:
            raise ValueError("attack mode needs the radii to attack (options['eps'] / --eps), e.g. 0.25,0.5")

    def prepare(self, smoothed, dataset, indices, settings) -> None:
        check_attackable(smoothed)
        targets = None if settings.options.label_from_api else getattr(dataset, "targets", None)
        for i in indices if targets is not None else ():
            if int(targets[i]) < 0:
                raise ValueError(f"image {i} of {settings.dataset} has no label (-1): an attack needs the true class "
                                 "to attack")

    def cells(self, result: AttackResult) -> dict[str, str]:
        return {"predict": str(result.prediction), "eps": ",".join(repr(e) for e in result.eps),
                "adv_predict": ",".join(str(p) for p in result.adversarial), "n": str(result.n)}

    def check_line(self, row: Mapping[str, str], s: Mapping[str, Any]) -> str | None:
        if int(row["n"]) != s["n"]:
            return f"n = {row['n']} is not the run's n = {s['n']}"
        eps = [float(e) for e in row["eps"].split(",")]
        wanted = [float(e) for e in (s.get("options") or {}).get("eps") or ()]
        if eps != wanted:
            return f"eps {row['eps']} is not the run's grid {wanted}"
        answers = [int(v) for v in row["adv_predict"].split(",")]
        if len(answers) != len(eps) or min(answers) < -1:
            return f"adv_predict {row['adv_predict']} is not one class id (or -1) per eps"
        return None

    def stream(self, smoothed, items, s):
        o = s.options
        for position, (idx, x, label) in enumerate(items):
            start = time.perf_counter()
            result = attack_full(smoothed, x, label, o.eps, s.n, s.alpha, s.batch, seed=s.seed, index=idx,
                                 steps=o.attack_steps, step_size=o.attack_step_size, m=o.attack_m,
                                 restarts=o.attack_restarts)
            yield position, result, time.perf_counter() - start
