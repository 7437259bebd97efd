"""What a layer needs of its input kernel: which diagonals may be dropped.

A kernel may drop the off-diagonal of the batch (`diagonal_batch`: `cov1` holds
variances only) or of space (`diagonal_spatial`: only position-with-itself
covariances). Whether a layer's *input* may drop a diagonal depends on whether its
*output* may: a Dense or elementwise layer maps diagonals to diagonals, `Flatten`
needs only the spatial diagonal whatever follows, pooling needs the full spatial
covariance. Requirements are therefore computed backwards from the requested output
layout: `Serial` composes them right to left (`then`), branches take the most
demanding of theirs (`meet`).
"""

from typing import NamedTuple


class Diagonals(NamedTuple):
    """Which diagonals a kernel may drop, and which layer forbids it (if one does)."""

    batch: bool
    spatial: bool
    batch_blocker: str | None = None
    spatial_blocker: str | None = None

    def meet(self, other: "Diagonals") -> "Diagonals":
        """The most demanding of two requirements (both branches must be served)."""
        return Diagonals(
            self.batch and other.batch,
            self.spatial and other.spatial,
            self.batch_blocker or other.batch_blocker,
            self.spatial_blocker or other.spatial_blocker,
        )

    def full_spatial(self, by: str) -> "Diagonals":
        """The requirement of a layer that reads every position pair (pooling)."""
        return self._replace(spatial=False, spatial_blocker=self.spatial_blocker or by)

    def full_batch(self, by: str) -> "Diagonals":
        """The requirement of a layer that mixes examples of a batch."""
        return self._replace(batch=False, batch_blocker=self.batch_blocker or by)

    def any_spatial(self) -> "Diagonals":
        """The requirement of a layer that reads only the spatial diagonal (Flatten)."""
        return self._replace(spatial=True, spatial_blocker=None)
