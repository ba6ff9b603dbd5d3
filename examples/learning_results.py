"""The learning results of docs/results.md: recipes, their robustness grid and ablations, as evaluation curves.

    python examples/learning_results.py run SET [SET ...] [--out runs/learning] [--jobs 2] [--timesteps N] [--device D]
    python examples/learning_results.py summarize [--out runs/learning] [--docs docs/learning]

On a GPU, the design card's pooled CNN + GRU recipe on 3 seeds at once (issue 20, item 3):

    python examples/learning_results.py run camera_pooled_seeds --device cuda --jobs 3

``run`` trains every run of the named sets (see ``SETS``) that has no report.json yet, ``--jobs`` at a time, each in
a fresh process with one torch thread; a run cut short with checkpoints is resumed. Every run is a phase-3 run
(:func:`sb3_carla_td3.validation.phases.phase3`): deterministic evaluation every ``run.eval_freq`` steps on fresh
seeded tracks (CarRacing-v3's own 1,000-frame episodes), so each run directory holds eval/evaluations.json, its
report and plots; a run whose "file" is a script of examples/ (the sets ``one_liner`` and ``own_env``) runs that
script with ``--seed`` and ``--out``. ``summarize`` prints one table per set and draws each set's curves (band over
seeds).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sb3_carla_td3.validation.statistics import evaluation_swings, stratified_bootstrap_iqm

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"

VECTOR = "carracing_vector.yaml"
CAMERA = "carracing_camera_vector.yaml"
PIXELS = "carracing_pixels.yaml"
#: A run: (label, config file, overrides applied on top of it, seed). The pseudo-section ``baseline`` of the
#: overrides, ``{"algorithm": "TD3" | "SAC" | "CrossQ"}``, trains that algorithm instead (see :func:`train_baseline`).
Run = tuple[str, str, dict[str, dict[str, Any]], int]
RECIPE = "recipe"
#: The recipe's ingredients, each switched back to plain TD3 / the original env semantics for the ablation.
WITHOUT: dict[str, dict[str, dict[str, Any]]] = {
    "- soft brake (max_brake 1)": {"env": {"max_brake": 1.0}},
    "- stuck penalty": {"env": {"stuck_penalty": 0.0}},
    "- preact penalty": {"td3": {"preact_penalty": 0.0}},
    "none of the three": {"env": {"max_brake": 1.0, "stuck_penalty": 0.0}, "td3": {"preact_penalty": 0.0}},
}
#: The camera's own ingredient, on top of :data:`WITHOUT`: DrQ-v2's bounded feature trunk after the CNN.
CAMERA_WITHOUT = WITHOUT | {"- feature trunk": {"encoder": {"trunk": None}}}
#: The robustness grid of bar 0: learning rate x exploration noise at batch 256, seed 0 (the recipe: lr 1e-3, 0.1).
GRID = [(lr, noise) for lr in (3e-4, 1e-3) for noise in (0.1, 0.2, 0.3)]


def _grid_run(lr: float, noise: float) -> Run:
    if (lr, noise) == (1e-3, 0.1):
        return (RECIPE, VECTOR, {}, 0)
    return (f"lr {lr:g}, noise {noise:g}", VECTOR, {"td3": {"learning_rate": lr, "exploration_noise": noise}}, 0)


SETS: dict[str, list[Run]] = {
    "vector": [(RECIPE, VECTOR, {}, seed) for seed in (0, 1, 2)],
    "vector_grid": [_grid_run(lr, noise) for lr, noise in GRID],
    "vector_ablation": [(RECIPE, VECTOR, {}, 0)] + [(label, VECTOR, o, 0) for label, o in WITHOUT.items()],
    "camera": [(RECIPE, CAMERA, {}, seed) for seed in (0, 1, 2)],
    "camera_baselines": [(f"SB3 {algo}", CAMERA, {"baseline": {"algorithm": algo}}, 0) for algo in ("TD3", "SAC")],
    "camera_ablation": [(RECIPE, CAMERA, {}, 0)] + [(label, CAMERA, o, 0) for label, o in CAMERA_WITHOUT.items()],
    "pixels": [(RECIPE, PIXELS, {}, seed) for seed in (0, 1, 2)],
    # The first pixels recipe: the CNN read uncentred [0, 1] pixels; seed 2's first conv layer died, its actor went blind.
    "pixels_uncentred": [("uncentred first recipe", PIXELS, {"encoder": {"center_pixels": False}}, s) for s in (0, 1, 2)],
}
#: The first (uncentred) pixels recipe with DrQ-v2's decaying exploration noise (0.3 -> 0.1 over 20K steps).
NOISE_SCHEDULE = {
    "td3": {"exploration_noise": 0.3, "exploration_noise_final": 0.1, "exploration_noise_decay_steps": 20000},
    "encoder": {"center_pixels": False},
}
SETS["pixels_noise_schedule"] = [("noise 0.3 to 0.1", PIXELS, NOISE_SCHEDULE, seed) for seed in (2, 1, 0)]
#: The pixels recipe (centred input) beside the first one, and seed 2 with the noise schedule (one figure).
SETS["pixels_vs_uncentred"] = SETS["pixels"] + SETS["pixels_uncentred"] + SETS["pixels_noise_schedule"][:1]
#: The design card's architecture under the camera + vector recipe (issue 20, item 3): separate encoders (the actor
#: trains its own CNN, clipped jointly with its head; targets own Polyak-averaged encoder copies) against shared, and
#: the card's pooled per-frame NatureCNN + GRU against the stacked NatureCNN at equal frames.
SEPARATE = {"encoder": {"mode": "separate"}}
POOLED = {"encoder": {"cnn": "pooled", "rnn": "gru"}}
SETS["camera_separate"] = [("separate encoders", CAMERA, SEPARATE, seed) for seed in (0, 1, 2)]
SETS["camera_pooled"] = [("pooled CNN + GRU", CAMERA, POOLED, 0)]
#: The pooled CNN + GRU recipe on 3 seeds, for a GPU (one command: ``run camera_pooled_seeds --device cuda --jobs 3``).
SETS["camera_pooled_seeds"] = [("pooled CNN + GRU", CAMERA, POOLED, seed) for seed in (0, 1, 2)]
SETS["camera_architecture"] = SETS["camera"] + SETS["camera_separate"] + SETS["camera_pooled"]
SETS["camera_separate_vs_shared"] = SETS["camera"] + SETS["camera_separate"]
#: Issue 20's bars run as examples (a Run whose "file" is a script of examples/; its overrides' pseudo-section
#: ``example`` holds extra command-line flags): the design card's one-liner on the camera + vector env, and the
#: recipe on gymnasium's own CarRacing-v3 through the wrappers, beside SB3's SAC on the same wrapped env.
ONE_LINER, OWN_ENV = "one_liner.py", "own_env.py"
SETS["one_liner"] = [("TD3CNN defaults", ONE_LINER, {}, seed) for seed in (0, 1, 2)]
SETS["camera_vs_one_liner"] = SETS["camera"] + SETS["one_liner"]
#: Seeds 1 and 2 also evaluate the Polyak-averaged actor (issue 21's churn; seed 0 ran before that option existed, and
#: it does not change training).
POLYAK_EVAL = {"example": {"eval-polyak-actor": True}}
SETS["own_env"] = [("TD3CNN defaults", OWN_ENV, POLYAK_EVAL, seed) for seed in (0, 1, 2)]
SETS["own_env"] += [("SB3 SAC", OWN_ENV, {"example": {"algo": "sac"}}, 0)]
#: The same pipeline without DrQ's random shift (TD3CNN(..., augment=None)): the defaults before the shift became
#: TD3CNN's default for image-only observations.
SETS["own_env_no_shift"] = [("TD3CNN augment none", OWN_ENV, {"example": {"augment": "none"}}, seed) for seed in (0, 1, 2)]
SETS["own_env_vs_shift"] = SETS["own_env"][:1] + SETS["own_env_no_shift"][:1]
#: Issue 21, item 3: several gradient steps per env step (update-to-data ratio, UTD) on the vector fast loop, 80K
#: frames with an evaluation every 5K, against bar 3's 700 within 40K frames; LayerNorm critics are what keeps a high
#: UTD stable in RLPD (Ball et al. 2023). Beside them SB3's SAC and sb3-contrib's CrossQ at the same frames (item 5).
#: Each evaluation also drives the Polyak-averaged actor (seed 0's runs ran before that option; training is the same).
FAST_BUDGET = {"total_timesteps": 20000, "eval_freq": 1250}
FAST = {"run": {**FAST_BUDGET, "eval_polyak_actor": True}}
#: LayerNorm after every hidden layer of both critics (RLPD's stabiliser for several gradient steps per env step).
LAYER_NORM = {"encoder": {"critic_layer_norm": True}}
UTD = {
    "UTD 1": FAST,
    "UTD 4": {**FAST, "td3": {"gradient_steps": 4}},
    "UTD 4 + LayerNorm critic": {**FAST, "td3": {"gradient_steps": 4}, **LAYER_NORM},
}
SETS["vector_utd"] = [(label, VECTOR, o, seed) for seed in (0, 1, 2) for label, o in UTD.items()]
#: Eight gradient steps per env step with LayerNorm critics, up to bar 3's 40K frames only (twice UTD 4's cost).
UTD8 = {"run": {**FAST["run"], "total_timesteps": 10000}, "td3": {"gradient_steps": 8}, **LAYER_NORM}
SETS["vector_utd8"] = [("UTD 8 + LayerNorm critic", VECTOR, UTD8, seed) for seed in (0, 1, 2)]
#: Issue 21, bar 5: UTD 4 + LayerNorm critics rerun on a seed never used while choosing it (seeds 0-2 chose it).
SETS["vector_utd_unseen_seed"] = [("UTD 4 + LayerNorm critic", VECTOR, UTD["UTD 4 + LayerNorm critic"], 7)]
#: Churn: LayerNorm critics without more updates (UTD 1), beside UTD 1 and UTD 4 with and without them, 80K frames;
#: on the vector a drop of more than 150 points is real (a 10-track swing is known to +-28).
SETS["vector_layernorm"] = [("UTD 1 + LayerNorm critic", VECTOR, {**FAST, **LAYER_NORM}, seed) for seed in (0, 1, 2)]
SETS["vector_layernorm_churn"] = SETS["vector_utd"] + SETS["vector_layernorm"]
#: n-step TD targets (SB3's NStepReplayBuffer, 3 steps as in DrQ-v2): rewards reach the critic 3 env steps sooner, the
#: lever DrQ-v2 leans on for sample efficiency; at UTD 1 (with and without LayerNorm critics) and on UTD 4 + LayerNorm
#: critics, up to bar 3's 40K frames.
NSTEP_BUDGET = {"run": {**FAST["run"], "total_timesteps": 10000}}
NSTEP = {
    "UTD 1 + 3-step": {**NSTEP_BUDGET, "td3": {"n_steps": 3}},
    "UTD 1 + LayerNorm critic + 3-step": {**NSTEP_BUDGET, "td3": {"n_steps": 3}, **LAYER_NORM},
    "UTD 4 + LayerNorm critic + 3-step": {
        **NSTEP_BUDGET,
        "td3": {"gradient_steps": 4, "n_steps": 3},
        **LAYER_NORM,
    },
}
SETS["vector_nstep"] = [(label, VECTOR, o, seed) for label, o in NSTEP.items() for seed in (0, 1, 2)]
SETS["vector_nstep_vs_utd"] = [run for run in SETS["vector_utd"] if run[0] != "UTD 4"] + SETS["vector_nstep"]
SETS["vector_baselines"] = [
    (label, VECTOR, {"run": FAST_BUDGET, "baseline": {"algorithm": algo}}, 0)  # SAC, CrossQ: no Polyak actor
    for label, algo in (("SB3 SAC", "SAC"), ("sb3-contrib CrossQ", "CrossQ"))
]
SETS["vector_utd_vs_baselines"] = SETS["vector_utd"] + SETS["vector_baselines"]
#: The same lever on camera + vector, against bar 2's 900 within 60K frames (half the recipe's 120K).
CAMERA_UTD = {
    "td3": {"gradient_steps": 4},
    **LAYER_NORM,
    "run": {"total_timesteps": 15000, "eval_freq": 2500, "eval_polyak_actor": True},
}
SETS["camera_utd"] = [("UTD 4 + LayerNorm critic", CAMERA, CAMERA_UTD, seed) for seed in (0, 1, 2)]
SETS["camera_utd_vs_recipe"] = SETS["camera"] + SETS["camera_utd"]
#: Issue 21, bar 5: the same on seed 7, never used while choosing it.
SETS["camera_utd_unseen_seed"] = [("UTD 4 + LayerNorm critic", CAMERA, CAMERA_UTD, 7)]
#: LayerNorm critics at UTD 1 on the camera recipe (free at UTD 1; on the vector they cut real churn from 7 drops to 1).
SETS["camera_layernorm"] = [("UTD 1 + LayerNorm critic", CAMERA, LAYER_NORM, seed) for seed in (0, 1, 2)]
SETS["camera_layernorm_unseen_seed"] = [("UTD 1 + LayerNorm critic", CAMERA, LAYER_NORM, 7)]
SETS["camera_layernorm_vs_recipe"] = SETS["camera"] + SETS["camera_layernorm"]
#: Bar 2's last 0.7 points (seed 1: 849.3 within 60K frames with LayerNorm critics at UTD 1): on top of them, 3-step
#: targets at UTD 1 (on the vector they lifted UTD 1 + LayerNorm from 74.3-level starts to 654.5 at 40K frames), and
#: two gradient steps per env step (UTD 4 churned on camera); 60K frames, the recipe's evaluation every 20K.
CAMERA_60K = {"run": {"total_timesteps": 15000}}
CAMERA_FASTER = {
    "UTD 1 + LayerNorm critic + 3-step": {**CAMERA_60K, "td3": {"n_steps": 3}, **LAYER_NORM},
    "UTD 2 + LayerNorm critic": {**CAMERA_60K, "td3": {"gradient_steps": 2}, **LAYER_NORM},
}
SETS["camera_layernorm_faster"] = [(label, CAMERA, o, seed) for label, o in CAMERA_FASTER.items() for seed in (1, 0, 2)]
SETS["camera_layernorm_faster_vs_layernorm"] = SETS["camera_layernorm"] + SETS["camera_layernorm_faster"]
#: How often one seed of LayerNorm critics at UTD 1 reaches 850 within 60K frames: three more seeds, never used while
#: choosing anything (with seeds 0-2 and 7: seven), to 60K frames.
LAYER_NORM_60K = {**CAMERA_60K, **LAYER_NORM}
SETS["camera_layernorm_more_seeds"] = [("UTD 1 + LayerNorm critic", CAMERA, LAYER_NORM_60K, s) for s in (3, 4, 5)]
#: 2 gradient steps per env step with LayerNorm critics and 3-step targets on the vector loop, against bar 3.
UTD2_NSTEP = {**NSTEP_BUDGET, "td3": {"gradient_steps": 2, "n_steps": 3}, **LAYER_NORM}
SETS["vector_utd2_nstep"] = [("UTD 2 + LayerNorm critic + 3-step", VECTOR, UTD2_NSTEP, s) for s in (0, 1, 2)]
#: Bar 3's missing information: the vector shows where the car is on the track but not the bend ahead (runs level off
#: at 600-700). Five centre-line points over the next 50 units, in the car's frame (the CARLA env's route vector),
#: on the recipe, on the fastest 40K-frame setting (UTD 1 + LayerNorm + 3-step) and on UTD 4 + LayerNorm, 40K frames.
WAYPOINTS = {"env": {"n_waypoints": 5, "lookahead_m": 50.0}}
VECTOR_WAYPOINTS = {
    "UTD 1 + waypoints": {**NSTEP_BUDGET, **WAYPOINTS},
    "UTD 1 + LayerNorm critic + 3-step + waypoints": {**NSTEP["UTD 1 + LayerNorm critic + 3-step"], **WAYPOINTS},
    "UTD 4 + LayerNorm critic + waypoints": {**NSTEP_BUDGET, "td3": {"gradient_steps": 4}, **LAYER_NORM, **WAYPOINTS},
}
SETS["vector_waypoints"] = [(label, VECTOR, o, seed) for seed in (0, 1, 2) for label, o in VECTOR_WAYPOINTS.items()]
#: Bar 5 and the seed spread: UTD 4 + LayerNorm critics with the points on seed 7, never used while choosing them,
#: and on seeds 3-5.
UTD4_WAYPOINTS = "UTD 4 + LayerNorm critic + waypoints"
SETS["vector_waypoints_more_seeds"] = [(UTD4_WAYPOINTS, VECTOR, VECTOR_WAYPOINTS[UTD4_WAYPOINTS], s) for s in (7, 3, 4, 5)]
#: The same three settings without the points (UTD 1 and UTD 4 + LayerNorm from vector_utd, read to 40K frames).
WITHOUT_WAYPOINTS = ("UTD 1", "UTD 4 + LayerNorm critic", "UTD 1 + LayerNorm critic + 3-step")
SETS["vector_waypoints_vs_none"] = [
    run for run in SETS["vector_utd"] + SETS["vector_nstep"] if run[0] in WITHOUT_WAYPOINTS
] + SETS["vector_waypoints"]
#: The same points in the camera + vector recipe's vector, against bar 2 (60K frames), at UTD 1 and UTD 2 with
#: LayerNorm critics (the two settings that came closest).
CAMERA_WAYPOINTS = {
    "UTD 1 + LayerNorm critic + waypoints": {**LAYER_NORM_60K, **WAYPOINTS},
    "UTD 2 + LayerNorm critic + waypoints": {**CAMERA_FASTER["UTD 2 + LayerNorm critic"], **WAYPOINTS},
}
SETS["camera_waypoints"] = [(label, CAMERA, o, seed) for label, o in CAMERA_WAYPOINTS.items() for seed in (0, 1, 2)]
#: The same two settings without the points (camera_layernorm is a 120K-frame set: run with --timesteps 15000).
SETS["camera_waypoints_vs_none"] = [
    *SETS["camera_layernorm"],
    *[run for run in SETS["camera_layernorm_faster"] if run[0] == "UTD 2 + LayerNorm critic"],
    *SETS["camera_waypoints"],
]
#: Issue 21, bar 1 with the measured churn remedy: the pixels recipe with LayerNorm critics, 400K frames, 3 seeds.
SETS["pixels_layernorm"] = [("UTD 1 + LayerNorm critic", PIXELS, LAYER_NORM, seed) for seed in (0, 1, 2)]
#: 3-step TD targets on top (the frame-stack buffer's n-step windows), after they sped up the vector loop.
CAMERA_NSTEP = {**CAMERA_UTD, "td3": {**CAMERA_UTD["td3"], "n_steps": 3}}
SETS["camera_nstep"] = [("UTD 4 + LayerNorm critic + 3-step", CAMERA, CAMERA_NSTEP, seed) for seed in (0, 1, 2)]
SETS["camera_nstep_vs_utd"] = SETS["camera_utd"] + SETS["camera_nstep"]
#: Issue 21, bar 5: the camera + vector and pixels recipes on seed 7, never used while either was chosen (seeds 0-2
#: chose them); pixels to 100K frames (``--timesteps 25000``), where its seeds 0-2 read 491.3 on average.
SETS["recipes_unseen_seed"] = [(RECIPE, CAMERA, {}, 7), (RECIPE, PIXELS, {}, 7)]
#: The recipe's curves beside SB3's own TD3 and SAC (one figure, same runs).
SETS["camera_vs_sb3"] = SETS["camera"] + SETS["camera_baselines"]


def run_name(label: str, file: str, seed: int) -> str:
    """:return: the directory of a run: config file, label and seed (one run shared by every set that names it)"""
    slug = "".join(c if c.isalnum() or c in ".-" else "_" for c in label).strip("_")
    return f"{Path(file).stem}/{slug}-s{seed}"


def run_one(
    label: str,
    file: str,
    overrides: dict[str, dict[str, Any]],
    seed: int,
    run_dir: str,
    timesteps: int | None,
    device: str | None = None,
) -> str:
    """Train (or resume) one run as a phase-3 run in a worker process; return a one-line summary."""
    import torch as th

    from sb3_carla_td3.config import config_from_dict
    from sb3_carla_td3.validation.phases import phase3

    th.set_num_threads(1)
    if file.endswith(".py"):
        return _run_example(label, file, overrides, seed, run_dir, timesteps)
    data = copy.deepcopy(_load_yaml(CONFIGS / file))
    overrides = copy.deepcopy(overrides)
    baseline = overrides.pop("baseline", None)
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    data["run"] = {**data.get("run", {}), "seed": seed, "threads": 1, "progress_bar": False}
    if device is not None:
        data["run"]["device"] = device
    if timesteps is not None:
        data["run"]["total_timesteps"] = timesteps
    Path(run_dir).parent.mkdir(parents=True, exist_ok=True)
    resume = (Path(run_dir) / "checkpoints" / "latest.json").is_file()
    config = None if resume else config_from_dict(data, source=f"{file} + {overrides or 'no overrides'}")
    with open(f"{run_dir}.log", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        if baseline is not None:
            assert config is not None, f"{run_dir}: SB3 baselines are not resumable; delete the directory"
            verdict = train_baseline(baseline["algorithm"], config, Path(run_dir))
        else:
            verdict = phase3(config, run_dir, resume=resume).verdict
    last = _evaluations(Path(run_dir))[-1:] or [{"mean_return": float("nan")}]
    return f"{label} seed {seed}: {verdict}, last evaluation {last[0]['mean_return']:.1f}"


def _run_example(
    label: str, file: str, overrides: dict[str, dict[str, Any]], seed: int, run_dir: str, timesteps: int | None
) -> str:
    """Run (or resume) ``examples/<file>`` with ``--seed``, ``--out run_dir`` and the ``example`` flags."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(file).stem, REPO / "examples" / file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--seed", str(seed), "--out", run_dir]
    flags = overrides.get("example", {}).items()
    argv += [f"--{k}" if v is True else f"--{k}={v}" for k, v in flags if v is not False]
    argv += [] if timesteps is None else ["--timesteps", str(timesteps)]
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with open(f"{run_dir}.log", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        module.main(argv)
    last = _evaluations(Path(run_dir))[-1:] or [{"mean_return": float("nan")}]
    return f"{label} seed {seed}: example, last evaluation {last[0]['mean_return']:.1f}"


#: The baselines ``train_baseline`` trains: SB3's TD3 and SAC, sb3-contrib's CrossQ (vector observations only).
BASELINES = ("TD3", "SAC", "CrossQ")


def train_baseline(algorithm: str, config: Any, run_dir: Path) -> str:
    """Train SB3's own ``TD3`` or ``SAC``, or sb3-contrib's ``CrossQ``, on the config's env, evaluated like the recipe.

    The policy is the library's default for the observation: ``MultiInputPolicy`` (a ``CombinedExtractor``: NatureCNN
    on the image, the vector flattened, one for the actor and one for the critic) for camera + vector, ``MlpPolicy``
    for the vector alone, with each algorithm's own network sizes; no clipping, no health checks. The ``td3``
    section's learning rate, buffer, warm-up, batch, gamma and gradient steps apply to all; tau to TD3 and SAC
    (CrossQ has no target network); TD3 also takes its exploration and target noise and policy delay; SAC and CrossQ
    keep their automatic entropy, CrossQ its own policy delay (3) and BatchRenorm critic. Writes config.yaml,
    eval/evaluations.json, progress.csv and a report.json whose verdict is "baseline".

    :param algorithm: one of :data:`BASELINES`
    :param config: the run config (a :class:`sb3_carla_td3.config.RunConfig`)
    :param run_dir: the run directory
    :return: the verdict ("baseline")
    """
    from gymnasium import spaces
    from sb3_contrib import CrossQ
    from stable_baselines3 import SAC, TD3
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.noise import NormalActionNoise

    from sb3_carla_td3.validation.runner import evaluation_callback, make_vec_env

    if algorithm not in BASELINES:
        raise ValueError(f"baseline algorithm must be one of {BASELINES}, got {algorithm!r}")
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / "config.yaml")
    env = make_vec_env(config, config.run.seed)
    policy = "MultiInputPolicy" if isinstance(env.observation_space, spaces.Dict) else "MlpPolicy"
    if algorithm == "CrossQ" and policy != "MlpPolicy":
        raise ValueError(f"sb3-contrib's CrossQ has only an MlpPolicy; the env observes {env.observation_space}")
    td3 = config.td3
    n_actions = env.action_space.shape[0]
    common: dict[str, Any] = dict(
        learning_rate=td3.learning_rate,
        buffer_size=td3.buffer_size,
        learning_starts=td3.learning_starts,
        batch_size=td3.batch_size,
        gamma=td3.gamma,
        gradient_steps=td3.gradient_steps,
        seed=config.run.seed,
        device="cpu",
    )
    model: Any
    if algorithm == "TD3":
        noise = NormalActionNoise(np.zeros(n_actions), np.full(n_actions, td3.exploration_noise))
        model = TD3(
            policy,
            env,
            tau=td3.tau,
            action_noise=noise,
            policy_delay=td3.policy_delay,
            target_policy_noise=td3.target_policy_noise,
            target_noise_clip=td3.target_noise_clip,
            **common,
        )
    elif algorithm == "SAC":
        model = SAC(policy, env, tau=td3.tau, **common)
    else:
        model = CrossQ(policy, env, **common)
    model.set_logger(configure(str(run_dir), ["csv"]))
    started = time.perf_counter()
    model.learn(config.run.total_timesteps, callback=evaluation_callback(config, run_dir))
    summary = {"timesteps": model.num_timesteps, "n_updates": model._n_updates, "seconds": time.perf_counter() - started}
    module = "sb3_contrib" if algorithm == "CrossQ" else "stable_baselines3"
    report = {"verdict": "baseline", "data": {"summary": summary, "algorithm": f"{module}.{algorithm}"}}
    (run_dir / "report.json").write_text(json.dumps(report, indent=1))
    return "baseline"


def _star_run_one(args: tuple[Any, ...]) -> str:
    return run_one(*args)


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def _evaluations(run_dir: Path, frames: int | None = None) -> list[dict[str, Any]]:
    """:return: the run's evaluations, oldest first, up to ``frames`` physics frames (None: all)"""
    from sb3_carla_td3.validation.phases import load_evaluations

    return [e for e in load_evaluations(run_dir) if frames is None or e["physics_frames"] <= frames]


def _completed(run_dir: Path) -> bool:
    """:return: whether the run finished its budget (an interrupted run has a report too, and is resumed)"""
    report = run_dir / "report.json"
    return report.is_file() and json.loads(report.read_text())["data"]["summary"].get("status") == "completed"


def plan(
    sets: list[str], out: Path, timesteps: int | None, device: str | None = None, reverse: bool = False
) -> list[tuple[Any, ...]]:
    """The :func:`run_one` arguments of every run of ``sets`` not completed yet, each once (last first with
    ``reverse``)."""
    todo: list[tuple[Any, ...]] = []
    for name in sets:
        for label, file, overrides, seed in SETS[name]:
            run_dir = out / run_name(label, file, seed)
            if not _completed(run_dir) and str(run_dir) not in [t[4] for t in todo]:
                todo.append((label, file, overrides, seed, str(run_dir), timesteps, device))
    return todo[::-1] if reverse else todo


def run(
    sets: list[str], out: Path, jobs: int, timesteps: int | None, reverse: bool = False, device: str | None = None
) -> None:
    """Train the missing runs of ``sets``, ``jobs`` at a time (last first with ``reverse``) on ``device``."""
    out.mkdir(parents=True, exist_ok=True)
    todo = plan(sets, out, timesteps, device, reverse)
    print(f"{len(todo)} runs to do, {jobs} at a time -> {out}", flush=True)
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(jobs, maxtasksperchild=1) as pool:
        for line in pool.imap_unordered(_star_run_one, todo):
            print(f"[{(time.perf_counter() - started) / 60:5.1f} min] {line}", flush=True)


def set_table(name: str, out: Path, frames: int | None = None) -> str:
    """One row per run of a set: last and best evaluation, frames, steps/s and verdict.

    :param frames: read each run up to this many physics frames (its last evaluation at or below), so that runs of
        different lengths (an ablation at a shorter budget, a run still going) are compared at the same point
    """
    lines = [
        "| run | lr | noise | seed | physics frames | last eval (mean ± std, episodes) | best eval | env steps/s | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by_label: dict[str, list[dict[str, Any]]] = {}  # the last evaluation of each run, by label
    for label, file, _, seed in SETS[name]:
        run_dir = out / run_name(label, file, seed)
        evaluations = _evaluations(run_dir, frames)
        if not evaluations:
            lines.append(f"| {label} | | | {seed} | not run | | | | |")
            continue
        config_file = run_dir / "config.yaml"  # examples have none: their settings are the constructor's defaults
        td3 = _load_yaml(config_file)["td3"] if config_file.is_file() else {}
        last = evaluations[-1]
        by_label.setdefault(label, []).append(last)
        best = max(e["mean_return"] for e in evaluations)
        speed, verdict = "", "stopped (no report yet)"
        if (run_dir / "report.json").is_file():
            report = json.loads((run_dir / "report.json").read_text())
            summary = report["data"]["summary"]
            steps = summary.get("session_timesteps", summary["timesteps"])  # a resumed run timed its last session only
            speed, verdict = f"{steps / summary['seconds']:.1f}", report["verdict"]
        last_cell, best_cell = f"{last['mean_return']:.1f} ± {last['std_return']:.1f} ({len(last['returns'])})", f"{best:.1f}"
        if "polyak_mean_return" in last:  # run.eval_polyak_actor: the Polyak-averaged actor drove the same tracks
            best_polyak = max(e.get("polyak_mean_return", -np.inf) for e in evaluations)
            last_cell += f"; Polyak actor {last['polyak_mean_return']:.1f}"
            best_cell += f"; Polyak actor {best_polyak:.1f}"
        lines.append(
            f"| {label} | {td3.get('learning_rate', 'default')} | {td3.get('exploration_noise', 'default')} | {seed} "
            f"| {last['physics_frames']:,} | {last_cell} | {best_cell} | {speed} | {verdict} |"
        )
    one_recipe = len({label for label, *_ in SETS[name]}) == 1  # seeds of one recipe, not a comparison
    for label, lasts in by_label.items():  # each label's seeds: their mean and IQM
        if len(lasts) < 2:
            continue
        prefix = "" if one_recipe else f"{label}: "
        mean, std = statistics.mean(e["mean_return"] for e in lasts), statistics.pstdev(e["mean_return"] for e in lasts)
        lines.append(f"| **{prefix}mean over runs** | | | | | **{mean:.1f} ± {std:.1f}** | | | |")
        episodes = min(len(e["returns"]) for e in lasts)
        iqm = stratified_bootstrap_iqm(np.array([e["returns"][:episodes] for e in lasts]))
        lines.append(
            f"| **{prefix}IQM [95 % CI]** (runs × {episodes} episodes, stratified bootstrap) | | | | | **{iqm}** | | | |"
        )
    return "\n".join(lines)


#: A drop this large between consecutive evaluations is what issue 21's first bar rules out for the last two.
CHURN_POINTS = 150.0


def churn_table(name: str, out: Path, frames: int | None = None) -> str:
    """One row per run (and per Polyak-averaged actor where measured): how its evaluations swing, and how many of the
    large drops are churn rather than evaluation noise (paired bootstrap over the same tracks, 95 %).

    :param frames: read each run up to this many physics frames, as in :func:`set_table`
    """
    lines = [
        f"| run | seed | swings | mean size | drops > {CHURN_POINTS:g} (beyond noise) | largest drop [95 % CI] "
        "| last swing [95 % CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, file, _, seed in SETS[name]:
        evaluations = _evaluations(out / run_name(label, file, seed), frames)
        for key, actor in (("returns", ""), ("polyak_returns", " (Polyak actor)")):
            swings = evaluation_swings(evaluations, key)
            if not swings:
                continue
            drops = [s for s in swings if s.change.value < -CHURN_POINTS]
            largest = min(swings, key=lambda s: s.change.value)
            largest_cell = f"{largest.change} at {largest.frames_after:,}" if largest.change.value < 0 else "none"
            lines.append(
                f"| {label}{actor} | {seed} | {len(swings)} | {np.mean([abs(s.change.value) for s in swings]):.1f} "
                f"| {len(drops)} ({sum(s.beyond_noise for s in drops)}) | {largest_cell} | {swings[-1].change} |"
            )
    return "\n".join(lines)


def draw_curves(name: str, out: Path, docs: Path) -> Path | None:
    """Evaluation return against physics frames: one line per run label, band over its seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_label: dict[str, list[list[dict[str, Any]]]] = {}
    for label, file, _, seed in SETS[name]:
        evaluations = _evaluations(out / run_name(label, file, seed))
        if evaluations:
            by_label.setdefault(label, []).append(evaluations)
    if not by_label:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, runs in by_label.items():
        n = min(len(r) for r in runs)
        frames = np.array([e["physics_frames"] for e in runs[0][:n]])
        means = np.array([[e["mean_return"] for e in r[:n]] for r in runs])
        (line,) = ax.plot(frames, means.mean(axis=0), lw=1.5, label=f"{label} ({len(runs)} seed{'s' * (len(runs) > 1)})")
        if len(runs) > 1:
            ax.fill_between(frames, means.min(axis=0), means.max(axis=0), alpha=0.2, color=line.get_color())
            for r in runs:  # a seed that ran further than the others: its own thin line past the band
                if len(r) > n:
                    tail = r[n - 1 :]
                    ax.plot([e["physics_frames"] for e in tail], [e["mean_return"] for e in tail], lw=0.8, ls="--",
                            color=line.get_color())  # fmt: skip
    ax.set(title=f"{name}: deterministic evaluation return", xlabel="physics frames", ylabel="mean return")
    ax.legend(fontsize=7)
    docs.mkdir(parents=True, exist_ok=True)
    path = docs / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def summarize(out: Path, docs: Path, frames: int | None = None, sets: list[str] | None = None) -> None:
    """Print each set's table (up to ``frames`` physics frames, see :func:`set_table`) and its swings
    (:func:`churn_table`), and draw its curves."""
    for name in sets or SETS:
        if any(_evaluations(out / run_name(label, file, seed)) for label, file, _, seed in SETS[name]):
            print(f"## {name}{f' (up to {frames:,} physics frames)' if frames else ''}\n\n{set_table(name, out, frames)}\n")
            churn = churn_table(name, out, frames)
            if churn.count("\n") > 1:
                print(f"Swings between consecutive evaluations (churn or noise):\n\n{churn}\n")
            figure = draw_curves(name, out, docs)
            if figure is not None:
                print(f"wrote {figure}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="train the missing runs of the named sets")
    run_parser.add_argument("sets", nargs="+", choices=sorted(SETS))
    run_parser.add_argument("--out", type=Path, default=Path("runs/learning"))
    run_parser.add_argument("--jobs", type=int, default=2)
    run_parser.add_argument("--timesteps", type=int, default=None, help="override run.total_timesteps")
    run_parser.add_argument("--reverse", action="store_true", help="last run first (a second worker on the same sets)")
    run_parser.add_argument("--device", default=None, help="run.device of every config run (cpu, cuda); examples: auto")
    summary_parser = sub.add_parser("summarize", help="print the tables and draw the curves")
    summary_parser.add_argument("--out", type=Path, default=Path("runs/learning"))
    summary_parser.add_argument("--docs", type=Path, default=Path("docs/learning"))
    summary_parser.add_argument("--frames", type=int, default=None, help="read every run up to this many frames")
    summary_parser.add_argument("sets", nargs="*", choices=[*sorted(SETS), []], help="default: every set")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.sets, args.out, args.jobs, args.timesteps, args.reverse, args.device)
    else:
        summarize(args.out, args.docs, args.frames, args.sets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
