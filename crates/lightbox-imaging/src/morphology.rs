//! Binary masks on a 3-D grid given in memory order (`dims[0]` slowest, `dims[2]` fastest):
//! the largest connected component (6-, 18- or 26-connected, as cc3d counts neighbours) and
//! hole filling (background not connected to the grid's border becomes foreground, as
//! fill_voids does).

/// Neighbour offsets of a voxel for `connectivity` 6, 18 or 26 (anything else: 26).
fn neighbours(connectivity: u8) -> Vec<[i64; 3]> {
    let mut out = Vec::new();
    for a in -1i64..=1 {
        for b in -1i64..=1 {
            for c in -1i64..=1 {
                let steps = a.abs() + b.abs() + c.abs();
                let keep = match connectivity {
                    6 => steps == 1,
                    18 => steps == 1 || steps == 2,
                    _ => steps >= 1,
                };
                if keep {
                    out.push([a, b, c]);
                }
            }
        }
    }
    out
}

/// Labels the mask's connected components (0: background, 1..: components in scan order) and
/// returns the labels with each component's size (index = label − 1).
pub fn components(mask: &[bool], dims: [usize; 3], connectivity: u8) -> (Vec<u32>, Vec<usize>) {
    let [n0, n1, n2] = dims;
    let offsets = neighbours(connectivity);
    let mut labels = vec![0u32; mask.len()];
    let mut sizes = Vec::new();
    let mut queue = Vec::new();
    for start in 0..mask.len().min(n0 * n1 * n2) {
        if !mask[start] || labels[start] != 0 {
            continue;
        }
        let label = sizes.len() as u32 + 1;
        labels[start] = label;
        queue.push(start);
        let mut size = 0;
        while let Some(at) = queue.pop() {
            size += 1;
            let (i, j, k) = ((at / (n1 * n2)) as i64, ((at / n2) % n1) as i64, (at % n2) as i64);
            for [a, b, c] in &offsets {
                let (x, y, z) = (i + a, j + b, k + c);
                if x < 0 || y < 0 || z < 0 || x >= n0 as i64 || y >= n1 as i64 || z >= n2 as i64 {
                    continue;
                }
                let next = (x as usize * n1 + y as usize) * n2 + z as usize;
                if mask[next] && labels[next] == 0 {
                    labels[next] = label;
                    queue.push(next);
                }
            }
        }
        sizes.push(size);
    }
    (labels, sizes)
}

/// Keeps only the largest connected component (the first of equal ones); an empty mask stays
/// empty.
pub fn keep_largest_component(mask: &mut [bool], dims: [usize; 3], connectivity: u8) {
    let (labels, sizes) = components(mask, dims, connectivity);
    let Some(largest) =
        sizes.iter().enumerate().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0))).map(|(i, _)| i as u32 + 1)
    else {
        return;
    };
    for (m, l) in mask.iter_mut().zip(labels) {
        *m = l == largest;
    }
}

/// Fills every hole: background that cannot reach the grid's border through 6-connected
/// background becomes foreground.
pub fn fill_holes(mask: &mut [bool], dims: [usize; 3]) {
    let [n0, n1, n2] = dims;
    let background: Vec<bool> = mask.iter().map(|m| !m).collect();
    let (labels, _) = components(&background, dims, 6);
    let mut outside = std::collections::HashSet::new();
    for i in 0..n0 {
        for j in 0..n1 {
            for k in 0..n2 {
                if i == 0 || j == 0 || k == 0 || i == n0 - 1 || j == n1 - 1 || k == n2 - 1 {
                    let l = labels[(i * n1 + j) * n2 + k];
                    if l != 0 {
                        outside.insert(l);
                    }
                }
            }
        }
    }
    for (m, l) in mask.iter_mut().zip(labels) {
        if l != 0 && !outside.contains(&l) {
            *m = true;
        }
    }
}

/// Dice overlap of two masks: 2|A∩B| / (|A| + |B|); 1 when both are empty.
pub fn dice(a: &[bool], b: &[bool]) -> f64 {
    let (mut both, mut total) = (0usize, 0usize);
    for (x, y) in a.iter().zip(b) {
        both += usize::from(*x && *y);
        total += usize::from(*x) + usize::from(*y);
    }
    if total == 0 { 1.0 } else { 2.0 * both as f64 / total as f64 }
}

/// Grows the mask by `steps` 6-connected layers (each step adds every voxel that touches the
/// mask by a face).
pub fn dilate(mask: &[bool], dims: [usize; 3], steps: usize) -> Vec<bool> {
    let [n0, n1, n2] = dims;
    let mut current = mask.to_vec();
    for _ in 0..steps {
        let previous = current.clone();
        for i in 0..n0 {
            for j in 0..n1 {
                for k in 0..n2 {
                    let at = (i * n1 + j) * n2 + k;
                    if previous[at] {
                        continue;
                    }
                    let touches = (i > 0 && previous[at - n1 * n2])
                        || (i + 1 < n0 && previous[at + n1 * n2])
                        || (j > 0 && previous[at - n2])
                        || (j + 1 < n1 && previous[at + n2])
                        || (k > 0 && previous[at - 1])
                        || (k + 1 < n2 && previous[at + 1]);
                    current[at] = touches;
                }
            }
        }
    }
    current
}

/// Shrinks the mask by `steps` 6-connected layers (the grid's border counts as background).
pub fn erode(mask: &[bool], dims: [usize; 3], steps: usize) -> Vec<bool> {
    let [n0, n1, n2] = dims;
    let mut outside: Vec<bool> = mask.iter().map(|m| !m).collect();
    // The border is outside: pad by marking border voxels' missing neighbours as background.
    for _ in 0..steps {
        let previous = outside.clone();
        for i in 0..n0 {
            for j in 0..n1 {
                for k in 0..n2 {
                    let at = (i * n1 + j) * n2 + k;
                    if previous[at] {
                        continue;
                    }
                    outside[at] = i == 0
                        || j == 0
                        || k == 0
                        || i + 1 == n0
                        || j + 1 == n1
                        || k + 1 == n2
                        || previous[at - n1 * n2]
                        || previous[at + n1 * n2]
                        || previous[at - n2]
                        || previous[at + n2]
                        || previous[at - 1]
                        || previous[at + 1];
                }
            }
        }
    }
    outside.iter().map(|o| !o).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(dims: [usize; 3], on: &[[usize; 3]]) -> Vec<bool> {
        let mut m = vec![false; dims.iter().product()];
        for [i, j, k] in on {
            m[(i * dims[1] + j) * dims[2] + k] = true;
        }
        m
    }

    #[test]
    fn diagonal_neighbours_count_only_at_higher_connectivity() {
        let dims = [3, 3, 3];
        // A and B share an edge, B and C only a corner.
        let m = grid(dims, &[[0, 0, 0], [1, 1, 0], [2, 2, 1]]);
        assert_eq!(components(&m, dims, 6).1.len(), 3);
        assert_eq!(components(&m, dims, 18).1.len(), 2);
        assert_eq!(components(&m, dims, 26).1.len(), 1);
    }

    #[test]
    fn the_largest_component_stays_and_holes_fill() {
        let dims = [6, 6, 6];
        // A hollow 3×3×3 cube (its centre a hole) and a lone voxel in a corner.
        let mut on = Vec::new();
        for i in 1..4 {
            for j in 1..4 {
                for k in 1..4 {
                    if [i, j, k] != [2, 2, 2] {
                        on.push([i, j, k]);
                    }
                }
            }
        }
        on.push([5, 5, 5]);
        let mut m = grid(dims, &on);
        keep_largest_component(&mut m, dims, 26);
        assert_eq!(m.iter().filter(|v| **v).count(), 26);
        assert!(!m[215], "the lone voxel is gone");
        fill_holes(&mut m, dims);
        assert_eq!(m.iter().filter(|v| **v).count(), 27);
        assert!((dice(&m, &grid(dims, &[[2, 2, 2]])) - 2.0 / 28.0).abs() < 1e-12);
    }
}
