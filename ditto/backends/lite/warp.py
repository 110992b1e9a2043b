"""Piecewise-affine inverse warp: target mesh -> a dense ``cv2.remap`` map over the ROI.

For every output pixel the exact piecewise-affine warp needs the *target* triangle that
contains it; the source position is then that triangle's barycentric mix of its source
vertices. The mesh topology never changes, so per avatar we precompute, on a coarse grid
(one point every ``grid_step_px``): the source triangle under each grid point and its
barycentric weights. Per frame:

1. first-order guess of each grid point's source position, ``g - d(g)``, where ``d`` is the
   vertex displacement interpolated over the source mesh (three gathers);
2. start in the source triangle under that guess and walk across triangle edges in the
   target mesh until the point lies inside (vectorised; most points need no step at all);
3. barycentric mix of the source vertices -> source position, as a displacement field that
   is zero on the ROI border, bilinearly upsampled to full resolution (the field is
   piecewise linear, so the upsampling error is tiny), plus the identity grid.

The result is exact at grid points, handles strong compression (a closing eyelid) and
stretching (the opening jaw) alike, and costs O(grid points) numpy work plus one resize.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from ditto.backends.lite.geometry import Mesh

logger = logging.getLogger(__name__)

MAX_WALK_STEPS = 12
"""Edge crossings allowed per grid point; displacements span a few triangles at most."""


class InverseWarp:
    """Precomputed, read-only inverse-warp tables for one avatar (shareable between streams)."""

    def __init__(self, mesh: Mesh, width: int, height: int, grid_step_px: int) -> None:
        if width % grid_step_px or height % grid_step_px:
            raise ValueError("ROI sides must be multiples of the grid step")
        self.width, self.height, self.step = width, height, grid_step_px
        self.grid_width, self.grid_height = width // grid_step_px, height // grid_step_px
        offset = (grid_step_px - 1) / 2.0  # grid point j sits at pixel j*step + offset (cv2.resize alignment)
        self._offset = offset
        gx = np.arange(self.grid_width, dtype=np.float32) * grid_step_px + offset
        gy = np.arange(self.grid_height, dtype=np.float32) * grid_step_px + offset
        grid_x, grid_y = np.meshgrid(gx, gy)
        self._gx = grid_x.ravel()
        self._gy = grid_y.ravel()

        self._triangles = mesh.triangles
        self._neighbors = mesh.neighbors
        self._src_vertices = mesh.vertices.astype(np.float32)
        self._src_tri_x = self._src_vertices[:, 0][mesh.triangles]  # (nt, 3)
        self._src_tri_y = self._src_vertices[:, 1][mesh.triangles]

        # Source triangle and barycentric weights of every grid point (scipy does the point location once).
        tri = mesh.locator
        pts = np.stack([self._gx, self._gy], axis=1).astype(np.float64)
        simplex = tri.find_simplex(pts)
        if (simplex < 0).any():  # points exactly on the hull: nudge them inside
            centre = np.array([width / 2.0, height / 2.0])
            pts[simplex < 0] += 1e-3 * np.sign(centre - pts[simplex < 0])
            simplex = np.maximum(tri.find_simplex(pts), 0)
        transform = tri.transform[simplex]
        b01 = np.einsum("nij,nj->ni", transform[:, :2], pts - transform[:, 2])
        self._grid_tri = simplex.astype(np.int32)
        self._grid_bary = np.column_stack([b01, 1.0 - b01.sum(axis=1)]).astype(np.float32)  # (n, 3)
        self._grid_vidx = mesh.triangles[simplex]  # (n, 3)
        self._tri_map = self._grid_tri.reshape(self.grid_height, self.grid_width)
        ident_y, ident_x = np.mgrid[0:height, 0:width].astype(np.float32)
        self.identity = np.ascontiguousarray(np.dstack([ident_x, ident_y]))  # (h, w, 2) float32

    def source_points(self, target_vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Source position of every grid point under the piecewise-affine warp.

        Args:
            target_vertices: (n_vertices, 2) float32 ROI pixels, same order as the mesh.

        Returns:
            ``(src_x, src_y)``, each (grid_height * grid_width,) float32.
        """
        tv = np.asarray(target_vertices, dtype=np.float32)
        disp = tv - self._src_vertices
        dx, dy = disp[:, 0], disp[:, 1]
        b, v = self._grid_bary, self._grid_vidx
        guess_x = self._gx - (b[:, 0] * dx[v[:, 0]] + b[:, 1] * dx[v[:, 1]] + b[:, 2] * dx[v[:, 2]])
        guess_y = self._gy - (b[:, 0] * dy[v[:, 0]] + b[:, 1] * dy[v[:, 1]] + b[:, 2] * dy[v[:, 2]])
        col = np.clip(np.rint((guess_x - self._offset) / self.step), 0, self.grid_width - 1).astype(np.intp)
        row = np.clip(np.rint((guess_y - self._offset) / self.step), 0, self.grid_height - 1).astype(np.intp)
        tri_idx = self._tri_map[row, col]

        coef_a, coef_b, coef_c, affine = self._triangle_tables(tv)
        n = len(self._gx)
        final_tri = np.empty(n, np.intp)
        converged = np.zeros(n, bool)
        active = np.arange(n)
        px, py, t = self._gx, self._gy, tri_idx.astype(np.intp)
        for _ in range(MAX_WALK_STEPS):
            weights = coef_a[t] * px[:, None] + coef_b[t] * py[:, None] + coef_c[t]  # barycentric, (m, 3)
            k = np.argmin(weights, axis=1)
            worst = np.take_along_axis(weights, k[:, None], axis=1)[:, 0]
            inside = worst >= -1e-4
            final_tri[active[inside]] = t[inside]
            converged[active[inside]] = True
            nxt = self._neighbors[t, k]
            keep = ~inside & (nxt >= 0)
            if not keep.any():
                break
            active, px, py, t = active[keep], px[keep], py[keep], nxt[keep]
        lost = ~converged
        final_tri[lost] = 0
        aff = affine[final_tri]  # (n, 6): source x = a0 x + a1 y + a2, source y = a3 x + a4 y + a5
        sx = aff[:, 0] * self._gx + aff[:, 1] * self._gy + aff[:, 2]
        sy = aff[:, 3] * self._gx + aff[:, 4] * self._gy + aff[:, 5]
        if lost.any():  # folded or degenerate spots: keep the first-order estimate there
            sx[lost], sy[lost] = guess_x[lost], guess_y[lost]
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("inverse warp: %d grid points fell back to first order", int(lost.sum()))
        return sx, sy

    def _triangle_tables(self, tv: np.ndarray):
        """Per target triangle: barycentric weights and the target->source affine map as linear functions of (x, y)."""
        x = tv[:, 0][self._triangles].astype(np.float64)  # (nt, 3)
        y = tv[:, 1][self._triangles].astype(np.float64)
        x0, x1, x2 = x[:, 0], x[:, 1], x[:, 2]
        y0, y1, y2 = y[:, 0], y[:, 1], y[:, 2]
        area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
        degenerate = np.abs(area) < 1e-6
        inv = 1.0 / np.where(degenerate, 1.0, area)
        # w_k(p) = a_k x + b_k y + c_k, from the signed areas of (p, next, next-next).
        a = np.stack([y1 - y2, y2 - y0, y0 - y1], axis=1) * inv[:, None]
        b = np.stack([x2 - x1, x0 - x2, x1 - x0], axis=1) * inv[:, None]
        c = np.stack([x1 * y2 - x2 * y1, x2 * y0 - x0 * y2, x0 * y1 - x1 * y0], axis=1) * inv[:, None]
        a[degenerate], b[degenerate], c[degenerate] = 0.0, 0.0, -1.0  # never "inside"
        sx, sy = self._src_tri_x.astype(np.float64), self._src_tri_y.astype(np.float64)
        affine = np.stack(
            [(a * sx).sum(1), (b * sx).sum(1), (c * sx).sum(1), (a * sy).sum(1), (b * sy).sum(1), (c * sy).sum(1)],
            axis=1,
        )
        f32 = np.float32
        return a.astype(f32), b.astype(f32), c.astype(f32), affine.astype(f32)

    def remap_table(
        self, target_vertices: np.ndarray, out: np.ndarray | None = None, scratch: np.ndarray | None = None
    ) -> np.ndarray:
        """Dense (height, width, 2) float32 ``cv2.remap`` map (source x, y per ROI pixel).

        ``out`` and ``scratch`` are optional preallocated (height, width, 2) float32 buffers.
        The displacement is forced to zero on the grid's outer ring, so the map is exactly
        the identity along the ROI border.
        """
        sx, sy = self.source_points(target_vertices)
        coarse = np.empty((self.grid_height, self.grid_width, 2), np.float32)
        coarse[..., 0] = (sx - self._gx).reshape(self.grid_height, self.grid_width)
        coarse[..., 1] = (sy - self._gy).reshape(self.grid_height, self.grid_width)
        coarse[0], coarse[-1], coarse[:, 0], coarse[:, -1] = 0.0, 0.0, 0.0, 0.0
        if scratch is None:
            scratch = np.empty((self.height, self.width, 2), np.float32)
        if out is None:
            out = np.empty((self.height, self.width, 2), np.float32)
        if self.step == 1:
            scratch[...] = coarse
        else:
            cv2.resize(coarse, (self.width, self.height), dst=scratch, interpolation=cv2.INTER_LINEAR)
        cv2.add(scratch, self.identity, dst=out)
        return out
