"""benchmarks/demo_results.py: figures and target checks from a hand-made demo results dict."""


def _results(stage0_em: float, generalist_em: float) -> dict:
    def tasks(pick, place, move, drawer):
        return {"atomic-quick/overall": (pick + place + move + drawer) / 4, "atomic-quick/task/atomic/pick_any": pick,
                "atomic-quick/task/atomic/place_on_plate": place, "atomic-quick/task/atomic/move_near": move,
                "atomic-quick/task/atomic/open_drawer": drawer}

    return {"preset": "quick", "wall_seconds": 1000.0, "evaluations": {
        "Stage-0 VLM": {"vqa/exact_match": stage0_em},
        "Expert": {**tasks(0.75, 0.5, 0.625, 1.0), "instruct-quick/overall": 0.125, "vqa/exact_match": 0.0},
        "Generalist": {**tasks(0.75, 0.5, 0.5, 1.0), "instruct-quick/overall": 0.25, "instruct-quick/seen": 0.25,
                       "instruct-quick/heldout": 0.25, "vqa/exact_match": generalist_em},
    }}


def test_figures_and_targets(load_benchmark):
    dr = load_benchmark("demo_results")
    rows = {r["figure"]: r for r in dr.figures(_results(0.08, 0.06))}
    assert rows["wall clock (min)"]["met"] is True
    fam = rows["Expert atomic success, pick/place_on/move_near"]
    assert abs(fam["value"] - (0.75 + 0.5 + 0.625) / 3) < 1e-12 and fam["met"] is True
    assert rows["Generalist atomic success, pick/place_on/move_near"]["met"] is False  # 0.583 < 0.60
    assert rows["instruct Generalist / Expert"]["value"] == 2.0 and rows["instruct Generalist / Expert"]["met"]
    assert rows["atomic Expert - Generalist (points)"]["value"] == 3.125
    # 0.08 - 0.06 is 0.020000000000000004 in floating point: exactly 2 points still meets "<= 2"
    drop = rows["VQA exact_match drop vs stage 0, Generalist (points)"]
    assert drop["value"] == 2.0 and drop["met"] is True
    assert rows["VQA exact_match drop vs stage 0, no-MoE (points)"]["value"] is None
    worse = {r["figure"]: r for r in dr.figures(_results(0.08, 0.05))}
    assert worse["VQA exact_match drop vs stage 0, Generalist (points)"]["met"] is False


def test_success_rates_carry_episode_counts_and_wilson_intervals(load_benchmark):
    import pytest

    dr = load_benchmark("demo_results")
    # 12 of 24, z = 1.96, by hand: centre 0.5, half-width 1.96 * sqrt(0.25/24 + 3.8416/2304) / (1 + 3.8416/24)
    lo, hi = dr.wilson_interval(12, 24)
    assert abs(lo - 0.31427) < 1e-5 and abs(hi - 0.68573) < 1e-5
    assert dr.wilson_interval(8, 8)[1] == 1.0 and dr.wilson_interval(0, 8)[0] == 0.0
    with pytest.raises(ValueError, match="successes"):
        dr.wilson_interval(9, 8)
    results = _results(0.08, 0.06)
    assert all("ci95" not in r for r in dr.figures(results))  # no episode count in the run: no interval made up
    results["config"] = {"eval_episodes": 8}
    rows = {r["figure"]: r for r in dr.figures(results)}
    fam = rows["Expert atomic success, pick/place_on/move_near"]
    assert (fam["successes"], fam["episodes"]) == (15, 24)  # 6 + 4 + 5 of 8
    assert fam["ci95"][0] < fam["value"] < fam["ci95"][1]
    everything = rows["Generalist atomic success, all quick tasks"]
    assert (everything["successes"], everything["episodes"]) == (22, 32)  # 6 + 4 + 4 + 8 of 8
    assert rows["Expert atomic/move_near"]["successes"] == 5 and "ci95" not in rows["wall clock (min)"]
