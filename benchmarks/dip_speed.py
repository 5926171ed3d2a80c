"""Milliseconds per DIP iteration of one net under different torch settings, side by side.

    python benchmarks/dip_speed.py [--net light|paper] [--size 256] [--iterations 10] [--rounds 3]
        [--device cpu|cuda] [--variants eager,channels_last,bf16,compile,...]

One iteration is what `engine.dip.loop` does per step: perturb the input, forward, MSE to a
target, backward, Adam step. Variants run interleaved (round 1 of every variant, then round
2, …) so a busy neighbour slows them alike; the median round is reported, with the ratio to
``eager``. ``compile`` also reports the seconds torch.compile took before its first step.

Variants: ``eager`` (fp32, contiguous, the loop's threads), ``channels_last`` (NHWC memory
format), ``bf16`` / ``fp16`` (autocast; fp16 only on CUDA, with a GradScaler),
``channels_last_bf16``, ``compile`` (torch.compile, inductor), ``threads1`` / ``threads2``
(eager with that many intra-op threads on the CPU).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.dip import nets  # noqa: E402
from engine.dip.loop import cpu_threads_for_fit  # noqa: E402

NETS = {"light": nets.LIGHT_DENOISE, "paper": nets.PAPER_DENOISE}


class Variant:
    def __init__(self, name: str, config: nets.NetConfig, size: int, device: torch.device) -> None:
        self.name = name
        self.device = device
        self.threads = {"threads1": 1, "threads2": 2}.get(name, cpu_threads_for_fit())
        torch.manual_seed(0)
        self.net = nets.build_net(config, 3).to(device).train()
        self.input = torch.rand(1, config.input_channels, size, size, device=device) * 0.1
        self.target = torch.rand(1, 3, size, size, device=device)
        self.channels_last = "channels_last" in name
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
            self.input = self.input.contiguous(memory_format=torch.channels_last)
        self.dtype = torch.bfloat16 if "bf16" in name else torch.float16 if "fp16" in name else None
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=0.01)
        self.forward = self.net
        self.compile_seconds = None
        if name == "compile":
            self.forward = torch.compile(self.net)
            started = time.perf_counter()
            self.step()  # compiles
            self.sync()
            self.compile_seconds = round(time.perf_counter() - started, 1)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def step(self) -> None:
        net_input = self.input + torch.randn_like(self.input) / 30.0
        if self.dtype is not None:
            with torch.autocast(self.device.type, dtype=self.dtype):
                output = self.forward(net_input)
            loss = (output.float() - self.target).square().mean()
        else:
            loss = (self.forward(net_input) - self.target).square().mean()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()

    def time(self, iterations: int) -> float:
        torch.set_num_threads(self.threads)
        self.sync()
        started = time.perf_counter()
        for _ in range(iterations):
            self.step()
        self.sync()
        return (time.perf_counter() - started) / iterations * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="light", choices=sorted(NETS))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=10, help="iterations per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--variants", default="eager,channels_last,bf16,compile,threads1,threads2")
    args = parser.parse_args()
    device = torch.device(args.device)
    variants = []
    for name in args.variants.split(","):
        started = time.perf_counter()
        variants.append(Variant(name, NETS[args.net], args.size, device))
        print(f"{name}: ready in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    for variant in variants:  # warm-up (allocator, oneDNN primitive caches)
        variant.time(2)
    rounds: dict[str, list[float]] = {v.name: [] for v in variants}
    for _ in range(args.rounds):
        for variant in variants:
            rounds[variant.name].append(variant.time(args.iterations))
            print(f"{variant.name}: {rounds[variant.name][-1]:.1f} ms/iteration", file=sys.stderr, flush=True)
    baseline = statistics.median(rounds["eager"]) if "eager" in rounds else None
    report = {"benchmark": "dip_speed", "net": args.net, "size": args.size, "device": args.device,
              "torch": torch.__version__, "iterations_per_round": args.iterations, "variants": {}}
    for variant in variants:
        median = statistics.median(rounds[variant.name])
        report["variants"][variant.name] = {
            "ms_per_iteration": round(median, 1), "rounds": [round(r, 1) for r in rounds[variant.name]],
            "threads": variant.threads if device.type == "cpu" else None,
            **({"vs_eager": round(baseline / median, 2)} if baseline else {}),
            **({"compile_seconds": variant.compile_seconds} if variant.compile_seconds is not None else {}),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
