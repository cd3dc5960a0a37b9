#!/usr/bin/env python3
"""PyTorch references for Lightbox's parity tests and benchmarks (issue 7), run on the GPU
machine where PyTorch is installed (scripts/device/check.sh calls it).

    pytorch_reference.py OUT_DIR DEEPBET_MODEL_PT

writes into OUT_DIR:
  parity/deepbet.json, parity/deepbet.f32   deepbet 1.0.2's own TorchScript network on a fixed
                                            input: brain probability on the most informative 32³
  parity/nnunet/                            an nnU-Net v2 result folder (plans.json, dataset.json,
                                            fold_0/checkpoint_final.pth saved by torch.save) of a
                                            PlainConvUNet built by dynamic_network_architectures
                                            from that plan, random weights
  parity/nnunet.json, parity/nnunet.f32     its logits on a fixed input, on a crop
  torch_bench.json                          PlainConvUNet 32..320, 6 stages, 1x1x128³ forward:
                                            fp32, TF32 and fp16 median ms on this GPU

The inputs are generated exactly as `lightbox_tests::parity_input` generates them (integer
hashing and sums of powers of two, so both sides hold the same floats). Each part runs on its
own: one failing leaves the others' output.
"""
import json
import os
import pydoc
import sys
import time
import traceback

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
from parity import parity_input, randomise_weights  # noqa: E402

OUT = sys.argv[1]
DEEPBET_PT = sys.argv[2]
PARITY = os.path.join(OUT, "parity")
os.makedirs(PARITY, exist_ok=True)


def strict_fp32():
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def max_abs(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def part(name, fn):
    started = time.time()
    try:
        fn()
        print(f"[{name}] done in {time.time() - started:.1f} s", flush=True)
    except Exception:
        print(f"[{name}] FAILED after {time.time() - started:.1f} s", flush=True)
        traceback.print_exc()


def deepbet():
    strict_fp32()
    dims, seed = (128, 128, 128), 1
    x = parity_input(dims, 1, seed)[None]  # 1x1xDxHxW
    model = torch.jit.load(DEEPBET_PT, map_location="cpu").eval()
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    p = y[0, 1]
    # The 32³ crop (on a grid of 16) with the most voxels neither near 0 nor near 1.
    informative = (p > 0.05) & (p < 0.95)
    best, start = -1, (0, 0, 0)
    for a in range(0, 128 - 32 + 1, 16):
        for b in range(0, 128 - 32 + 1, 16):
            for c in range(0, 128 - 32 + 1, 16):
                n = int(informative[a:a + 32, b:b + 32, c:c + 32].sum())
                if n > best:
                    best, start = n, (a, b, c)
    a, b, c = start
    crop = np.ascontiguousarray(p[a:a + 32, b:b + 32, c:c + 32], dtype=np.float32)
    crop.tofile(os.path.join(PARITY, "deepbet.f32"))
    meta = {
        "network": "deepbet 1.0.2 data/models/model.pt (TorchScript, its own forward, softmax included)",
        "torch": torch.__version__,
        "reference": "PyTorch CPU float32",
        "input": {"dims": list(dims), "channels": 1, "seed": seed, "sum": float(x.astype(np.float64).sum())},
        "output": "channel 1 (brain probability)",
        "crop": {"start": list(start), "size": [32, 32, 32], "informative_voxels": best},
        "mean_probability": float(p.astype(np.float64).mean()),
        "informative_voxels_whole": int(informative.sum()),
    }
    if torch.cuda.is_available():
        gpu = torch.jit.load(DEEPBET_PT, map_location="cuda").eval()
        with torch.no_grad():
            yg = gpu(torch.from_numpy(x).cuda()).cpu().numpy()
        meta["torch_gpu_vs_cpu_max_abs"] = max_abs(yg, y)
        meta["gpu"] = torch.cuda.get_device_name()
    try:
        m64 = torch.jit.load(DEEPBET_PT, map_location="cpu").eval().double()
        with torch.no_grad():
            y64 = m64(torch.from_numpy(x).double()).numpy()
        meta["torch_fp32_vs_fp64_max_abs"] = max_abs(y, y64)
    except Exception as e:  # a traced graph may pin float32
        meta["torch_fp64"] = f"not run: {e}"[:200]
    json.dump(meta, open(os.path.join(PARITY, "deepbet.json"), "w"), indent=1)
    print(json.dumps(meta), flush=True)


def nnunet_plans():
    arch = {
        "n_stages": 3,
        "features_per_stage": [4, 8, 16],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
        "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2],
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    plans = {
        "dataset_name": "Dataset901_LightboxParity",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [3.0, 0.5, 0.5],
        "original_median_shape_after_transp": [16, 40, 48],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [16, 40, 48],
                "median_image_size_in_voxels": [16.0, 40.0, 48.0],
                "spacing": [3.0, 0.5, 0.5],
                "normalization_schemes": ["ZScoreNormalization", "ZScoreNormalization"],
                "use_mask_for_norm": [False, False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": arch,
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 1.0, "mean": 0.75, "median": 0.75, "min": 0.5, "percentile_00_5": 0.5, "percentile_99_5": 1.0, "std": 0.15},
            "1": {"max": 1.0, "mean": 0.75, "median": 0.75, "min": 0.5, "percentile_00_5": 0.5, "percentile_99_5": 1.0, "std": 0.15},
        },
    }
    dataset = {
        "channel_names": {"0": "T2", "1": "ADC"},
        "labels": {"background": 0, "gland": 1, "lesion": 2},
        "numTraining": 2,
        "file_ending": ".nii.gz",
    }
    return plans, dataset


def network_from_plans(plans, configuration, input_channels, output_channels):
    """nnU-Net v2's get_network_from_plans, as nnunetv2/utilities/get_network_from_plans.py does it."""
    a = plans["configurations"][configuration]["architecture"]
    kwargs = dict(**a["arch_kwargs"])
    for key in a["_kw_requires_import"]:
        if kwargs[key] is not None:
            kwargs[key] = pydoc.locate(kwargs[key])
    cls = pydoc.locate(a["network_class_name"])
    kwargs["deep_supervision"] = False
    net = cls(input_channels=input_channels, num_classes=output_channels, **kwargs)
    if hasattr(net, "initialize"):
        net.apply(net.initialize)
    return net


def nnunet():
    strict_fp32()
    plans, dataset = nnunet_plans()
    folder = os.path.join(PARITY, "nnunet")
    os.makedirs(os.path.join(folder, "fold_0"), exist_ok=True)
    json.dump(plans, open(os.path.join(folder, "plans.json"), "w"), indent=4)
    json.dump(dataset, open(os.path.join(folder, "dataset.json"), "w"), indent=4)
    torch.manual_seed(20261126)
    net = network_from_plans(plans, "3d_fullres", 2, 3)
    randomise_weights(net, 7)
    dims = (16, 40, 48)
    x = torch.from_numpy(parity_input(dims, 2, 7)[None])
    # One training step, as a real checkpoint has it: SGD's momentum buffers in optimizer_state.
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, weight_decay=3e-5, momentum=0.99, nesterov=True)
    net(x).float().square().mean().backward()
    opt.step()
    opt.zero_grad()
    net.eval()
    with torch.no_grad():
        y = net(x).numpy()
    checkpoint = {
        "network_weights": net.state_dict(),
        "optimizer_state": opt.state_dict(),
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [0.1, 0.2], "ema_fg_dice": [0.1, 0.11], "epoch_end_timestamps": [1.0, 2.0]},
        "_best_ema": 0.11,
        "current_epoch": 2,
        "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset,
                      "device": torch.device("cuda", 0)},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    torch.save(checkpoint, os.path.join(folder, "fold_0", "checkpoint_final.pth"))
    start, size = [4, 8, 8], [8, 24, 32]
    crop = y[0, :, 4:12, 8:32, 8:40]
    np.ascontiguousarray(crop, dtype=np.float32).tofile(os.path.join(PARITY, "nnunet.f32"))
    meta = {
        "network": "dynamic_network_architectures PlainConvUNet from parity/nnunet/plans.json (3d_fullres), "
                   "random weights, built as nnU-Net v2's get_network_from_plans builds it",
        "torch": torch.__version__,
        "reference": "PyTorch CPU float32",
        "input": {"dims": list(dims), "channels": 2, "seed": 7, "sum": float(x.double().sum())},
        "output": "logits, all 3 classes",
        "crop": {"start": start, "size": size},
        "logits_sum": float(y.astype(np.float64).sum()),
        "logits_abs_max": float(np.abs(y).max()),
    }
    try:
        import dynamic_network_architectures as dna
        meta["dynamic_network_architectures"] = getattr(dna, "__version__", "unknown")
    except Exception:
        pass
    if torch.cuda.is_available():
        with torch.no_grad():
            yg = net.cuda()(x.cuda()).cpu().numpy()
        meta["torch_gpu_vs_cpu_max_abs"] = max_abs(yg, y)
    json.dump(meta, open(os.path.join(PARITY, "nnunet.json"), "w"), indent=1)
    print(json.dumps(meta), flush=True)


def bench():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    net = PlainConvUNet(1, 6, [32, 64, 128, 256, 320, 320], torch.nn.Conv3d, 3, [1, 2, 2, 2, 2, 2], [2] * 6, 2,
                        [2] * 5, conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
                        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
                        nonlin_kwargs={"inplace": True}).cuda().eval()
    x = torch.randn(1, 1, 128, 128, 128, device="cuda")
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.deterministic = False
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "input": [1, 1, 128, 128, 128]}
    for mode in ["fp32", "tf32", "fp16"]:
        torch.backends.cudnn.allow_tf32 = mode == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
        times = []
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=mode == "fp16"):
            for i in range(25):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                net(x)
                e.record()
                torch.cuda.synchronize()
                if i >= 5:
                    times.append(s.elapsed_time(e))
        result[f"{mode}_ms"] = float(np.median(times))
        print(f"PyTorch PlainConvUNet 32..320 1x1x128³ {mode}: median {result[f'{mode}_ms']:.2f} ms", flush=True)
    result["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 1e6
    json.dump(result, open(os.path.join(OUT, "torch_bench.json"), "w"), indent=1)


parts = sys.argv[3].split(",") if len(sys.argv) > 3 else ["deepbet", "nnunet", "bench"]
for name in parts:
    part(name, {"deepbet": deepbet, "nnunet": nnunet, "bench": bench}[name])
