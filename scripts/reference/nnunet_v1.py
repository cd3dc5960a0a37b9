#!/usr/bin/env python3
"""An nnU-Net v1 result folder and its PyTorch references, made by nnU-Net v1's own code, for
Lightbox's v1 import and parity tests (issue 10: the PI-CAI baseline is an nnU-Net v1 model).

    nnunet_v1.py OUT_DIR        (scripts/reference/nnunet_v1.sh makes the environment)

writes into OUT_DIR (tests/fixtures/parity):
  nnunet_v1/plans.pkl                      a 3d_fullres plan in ExperimentPlanner3D_v21's format,
                                           pickled by nnU-Net's own save_pickle; PI-CAI's
                                           channels (T2W, "CT" = the ADC, HBV), CT normalisation
                                           of channel 1 as PI-CAI trains it
  nnunet_v1/fold_{0,1}/model_best.model(.pkl)  nnUNetTrainerV2's save_checkpoint after one SGD
                                           step (Generic_UNet with random weights, its optimiser
                                           state), two folds
  nnunet_v1.json, nnunet_v1.f32            the network's logits on a fixed input, on a crop
  nnunet_v1.softmax.f32                    nnU-Net v1's own prediction of the same input as a
                                           study (preprocess_patient, then sliding window with
                                           Gaussian weighting and mirroring): the lesion
                                           probability on the input grid
  nnunet_v1.ensemble.f32                   the same for the ensemble of folds 0 and 1

The input is `lightbox_tests::parity_input` with channel 1 scaled by 3000 (an ADC in µm²/s, so
that CT normalisation clips it). Made on the CPU: the figures are PyTorch CPU float32.
"""
import json
import os
import shutil
import sys
from collections import OrderedDict

import numpy as np
import SimpleITK as sitk
import torch
from batchgenerators.utilities.file_and_folder_operations import load_pickle, save_pickle
from nnunet.training.network_training.nnUNetTrainerV2 import nnUNetTrainerV2
from parity import parity_input, randomise_weights

OUT = sys.argv[1]
FOLDER = os.path.join(OUT, "nnunet_v1")
ADC_SCALE = np.float32(3000.0)
DIMS = (12, 48, 48)
SPACING = (3.0, 0.5, 0.5)


def plans():
    def intensity(scale, mean, sd):
        return OrderedDict(
            median=np.float64(mean * scale), mean=np.float64(mean * scale), sd=np.float64(sd * scale),
            mn=np.float64(0.0), mx=np.float64(scale), percentile_99_5=np.float64(0.9 * scale),
            percentile_00_5=np.float64(0.05 * scale))

    stage = {
        "batch_size": 2,
        "num_pool_per_axis": [1, 2, 2],
        "patch_size": np.array([8, 32, 32]),
        "median_patient_size_in_voxels": np.array(DIMS),
        "current_spacing": np.array(SPACING),
        "original_spacing": np.array(SPACING),
        "do_dummy_2D_data_aug": True,
        "pool_op_kernel_sizes": [[1, 2, 2], [2, 2, 2]],
        "conv_kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
    }
    modalities = {0: "T2W", 1: "CT", 2: "HBV"}
    return {
        "num_stages": 1,
        "num_modalities": 3,
        "modalities": modalities,
        "normalization_schemes": OrderedDict([(0, "nonCT"), (1, "CT"), (2, "nonCT")]),
        "dataset_properties": {
            "all_sizes": [DIMS], "all_spacings": [np.array(SPACING)], "all_classes": [1],
            "modalities": modalities,
            "intensityproperties": OrderedDict([(0, intensity(1.0, 0.5, 0.2)), (1, intensity(3000.0, 0.45, 0.22)),
                                                (2, intensity(1.0, 0.5, 0.2))]),
            "size_reductions": OrderedDict([("case_0000", 1.0)]),
        },
        "list_of_npz_files": ["/workdir/nnUNet_preprocessed/Task2201_picai_baseline/nnUNetData_plans_v2.1_stage0/case_0000.npz"],
        "original_spacings": [np.array(SPACING)],
        "original_sizes": [DIMS],
        "preprocessed_data_folder": "/workdir/nnUNet_preprocessed/Task2201_picai_baseline",
        "num_classes": 1,
        "all_classes": [1],
        "base_num_features": 8,
        "use_mask_for_norm": OrderedDict([(0, False), (1, False), (2, False)]),
        "keep_only_largest_region": None,
        "min_region_size_per_class": None,
        "min_size_per_class": None,
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "data_identifier": "nnUNetData_plans_v2.1",
        "plans_per_stage": {0: stage},
        "preprocessor_name": "GenericPreprocessor",
        "conv_per_stage": 2,
    }


def make_fold(plans_file, fold, torch_seed, weight_seed, x0):
    """nnUNetTrainerV2 for `fold` with random weights, one SGD step on `x0`, saved by its own
    save_checkpoint as fold_<fold>/model_best.model(.pkl). Returns the trainer."""
    out = os.path.join(FOLDER, f"fold_{fold}")
    os.makedirs(out, exist_ok=True)
    trainer = nnUNetTrainerV2(plans_file, fold, output_folder=FOLDER, dataset_directory=FOLDER, stage=0,
                              deterministic=True, fp16=False)
    trainer.process_plans(load_pickle(plans_file))
    trainer.setup_DA_params()
    torch.manual_seed(torch_seed)
    trainer.initialize_network()
    trainer.initialize_optimizer_and_scheduler()
    net = trainer.network
    randomise_weights(net, weight_seed)
    # One training step with deep supervision, as a real checkpoint has it (SGD momentum).
    net.train()
    sum(o.float().square().mean() for o in net(torch.from_numpy(x0[None]))).backward()
    trainer.optimizer.step()
    trainer.optimizer.zero_grad()
    trainer.epoch = 1
    trainer.save_checkpoint(os.path.join(out, "model_best.model"))
    for f in os.listdir(out):
        if f.startswith("training_log"):
            os.remove(os.path.join(out, f))
    net.eval()
    net.do_ds = False
    return trainer


def predict(trainer, files):
    """nnU-Net v1's own inference of a study (as predict_cases runs each fold)."""
    d, _, _ = trainer.preprocess_patient(files)
    return trainer.predict_preprocessed_data_return_seg_and_softmax(
        d, do_mirroring=True, mirror_axes=trainer.data_aug_params["mirror_axes"], use_sliding_window=True,
        step_size=0.5, use_gaussian=True, all_in_gpu=False, verbose=False, mixed_precision=False)[1]


def main():
    torch.set_num_threads(2)
    shutil.rmtree(FOLDER, ignore_errors=True)
    os.makedirs(FOLDER)
    plans_file = os.path.join(FOLDER, "plans.pkl")
    save_pickle(plans(), plans_file)
    x0 = parity_input(DIMS, 3, 11)
    x = x0.copy()
    x[1] *= ADC_SCALE
    folds = [make_fold(plans_file, 0, 20261126, 7, x0), make_fold(plans_file, 1, 20261127, 8, x0)]

    # Fold 0's network alone, on the input as nnU-Net would normalise it.
    with torch.no_grad():
        y = folds[0].network(torch.from_numpy(x0[None])).numpy()
    start, size = [2, 8, 8], [8, 24, 24]
    crop = y[0, :, 2:10, 8:32, 8:32]
    np.ascontiguousarray(crop, dtype=np.float32).tofile(os.path.join(OUT, "nnunet_v1.f32"))

    # nnU-Net v1's own inference on the input as a study of three NIfTI files: fold 0, and the
    # ensemble of folds 0 and 1 as predict_cases makes it (the mean of the folds' softmax).
    tmp = os.path.join(OUT, "nnunet_v1_input.tmp")
    os.makedirs(tmp, exist_ok=True)
    files = []
    for c in range(3):
        image = sitk.GetImageFromArray(x[c])
        image.SetSpacing(tuple(reversed(SPACING)))
        path = os.path.join(tmp, f"case_{c:04d}.nii.gz")
        sitk.WriteImage(image, path)
        files.append(path)
    softmaxes = [predict(t, files) for t in folds]
    shutil.rmtree(tmp)
    softmax = softmaxes[0]
    ensemble = np.vstack([s[None] for s in softmaxes]).mean(0)
    assert softmax.shape == (2,) + DIMS, softmax.shape
    np.ascontiguousarray(softmax[1], dtype=np.float32).tofile(os.path.join(OUT, "nnunet_v1.softmax.f32"))
    np.ascontiguousarray(ensemble[1], dtype=np.float32).tofile(os.path.join(OUT, "nnunet_v1.ensemble.f32"))
    trainer = folds[0]
    meta = {
        "network": "nnU-Net v1 (nnunet 1.7.1) Generic_UNet as nnUNetTrainerV2.initialize_network builds it from "
                   "parity/nnunet_v1/plans.pkl, random weights, one SGD step; saved by its save_checkpoint "
                   "(folds 0 and 1, different weights)",
        "torch": torch.__version__,
        "nnunet": "1.7.1",
        "reference": "PyTorch CPU float32",
        "input": {"dims": list(DIMS), "channels": 3, "seed": 11, "adc_channel": 1, "adc_scale": float(ADC_SCALE),
                  "spacing_zyx": list(SPACING), "sum": float(x.astype(np.float64).sum())},
        "network_input": "parity_input itself (channel 1 not scaled)",
        "output": "fold 0's logits, both classes, on a crop",
        "crop": {"start": start, "size": size},
        "logits_abs_max": float(np.abs(y).max()),
        "softmax": "nnU-Net v1 predict_preprocessed_data_return_seg_and_softmax (step 0.5, Gaussian, mirroring "
                   "(0, 1, 2)) after preprocess_patient; the lesion class's probability, all voxels: fold 0 in "
                   "nnunet_v1.softmax.f32, the mean of folds 0 and 1 (as predict_cases ensembles) in "
                   "nnunet_v1.ensemble.f32",
        "softmax_sum": float(softmax[1].astype(np.float64).sum()),
        "ensemble_sum": float(ensemble[1].astype(np.float64).sum()),
        "ensemble_vs_fold_0_max_abs": float(np.abs(ensemble[1] - softmax[1]).max()),
        "mirror_axes": list(trainer.data_aug_params["mirror_axes"]),
    }
    json.dump(meta, open(os.path.join(OUT, "nnunet_v1.json"), "w"), indent=1)
    print(json.dumps(meta))


main()
