#!/usr/bin/env python
# usage: python tools/l2r_score.py DATA FIELDS_DIR EVALUATION_pairs.csv
"""Independent Learn2Reg-style scoring of regtune register's fields (numpy/scipy/surface-distance only)."""
import csv, sys, numpy as np, nibabel as nib
from scipy.ndimage import map_coordinates
import surface_distance as sd
D, F, EV = sys.argv[1], sys.argv[2], sys.argv[3]
ev = {(r["fixed"], r["moving"]): r for r in csv.DictReader(open(EV))}
diffs, hdd, ds, jd = [], [], [], []
for (f, m), r in ev.items():
    u = nib.load(f"{F}/disp_{f}_{m}.nii.gz").get_fdata()
    fl = np.asarray(nib.load(f"{D}/labelsTr/{f}.nii.gz").dataobj); ml = np.asarray(nib.load(f"{D}/labelsTr/{m}.nii.gz").dataobj)
    ml = np.where(np.isin(ml,(0,1,2)), ml, 0); fl = np.where(np.isin(fl,(0,1,2)), fl, 0)
    grid = np.stack(np.meshgrid(*(np.arange(s) for s in fl.shape), indexing="ij"))
    w = map_coordinates(ml, grid + np.moveaxis(u, -1, 0), order=0)
    dice = np.mean([2*((fl==l)&(w==l)).sum()/((fl==l).sum()+(w==l).sum()) for l in (1,2)])
    hd = np.mean([sd.compute_robust_hausdorff(sd.compute_surface_distances(fl==l, w==l, (1,1,1)), 95) for l in (1,2)])
    # Jacobian (L2R evaluation_utils style: np.gradient central differences, crop 2)
    J = np.stack([np.stack(np.gradient(u[..., i]), 0) for i in range(3)], 0) + np.eye(3)[:, :, None, None, None]
    det = np.linalg.det(np.moveaxis(J, (0, 1), (-2, -1)))[2:-2, 2:-2, 2:-2]
    diffs.append(abs(dice - float(r["dice"]))); hdd.append(abs(hd - float(r["hd95"]))); ds.append(dice)
    jd.append(abs(np.log(np.clip(det,1e-9,1e9)).std() - float(r["sdlogj"])))
print(f"{len(ds)} pairs: independent mean Dice {np.mean(ds):.4f}; max |Dice diff| {max(diffs):.5f}; max |HD95 diff| {max(hdd):.4f}; max |SDlogJ diff| {max(jd):.2e}")
