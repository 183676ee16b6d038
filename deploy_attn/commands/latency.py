"""How a bench result reads: its latency table and the settings it ran with."""
from __future__ import annotations


def latency_table(result: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a bench result (as_dict form): median, p90, mean, throughput and
    speed-up over eager PyTorch (or the first measured backend); skipped rows say why."""
    timed = [b for b in result["backends"] if b.get("latency")]
    base = next((b for b in timed if b["backend"] == "torch"), timed[0] if timed else None)
    rows = []
    for b in result["backends"]:
        lat = b.get("latency")
        if not lat:
            rows.append([b["backend"], "skipped", "", "", "", "", b.get("reason") or ""])
            continue
        rows.append([b["backend"], f"{lat['median_ms']:.3f}", f"{lat['p90_ms']:.3f}",
                     f"{lat['mean_ms']:.3f}", f"{lat['throughput']:.1f}",
                     f"{base['latency']['median_ms'] / lat['median_ms']:.2f}x",
                     b.get("artifact") or ""])
    header = ["backend", "median ms", "p90 ms", "mean ms", "samples/s",
              f"vs {base['backend'] if base else '-'}", "artifact / reason skipped"]
    return header, rows


def settings_line(result: dict) -> str:
    """What a bench result was measured with, in one paragraph."""
    o, env = result.get("ort_options", {}), result.get("environment", {})
    ov = result.get("ov_options")
    return (f"{result['name']} {'x'.join(map(str, result['input_shape']))}, "
            f"{result['threads']} thread(s), {result['runs']} runs after {result['warmup']} "
            f"warm-up, {result.get('method', '')}. ONNX Runtime {o.get('provider')}, "
            f"{o.get('graph_optimization_level')}, intra-op {o.get('intra_op_num_threads')}, "
            f"inter-op {o.get('inter_op_num_threads')}, {o.get('execution_mode')}, spinning "
            f"{'off' if o.get('allow_spinning') == '0' else 'on'}. "
            + (f"OpenVINO CPU {', '.join(f'{k} {v}' for k, v in ov.items())}. " if ov else "") +
            f"{env.get('cpu', '?')} ({' '.join(env.get('cpu_flags', [])) or 'no listed ISA'}; "
            f"8-bit dot products {env.get('isa', {}).get('int8_dot', '?')}; "
            f"{env.get('usable_cores', '?')} usable cores, load average "
            f"{' '.join(map(str, env.get('load_average', [])))})"
            f"{', GPU ' + env['gpu'] if env.get('gpu') else ', no GPU'}.")
