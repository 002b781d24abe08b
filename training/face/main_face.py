"""Which of the faces found in a photo is its subject."""

from __future__ import annotations

Box = tuple[int, int, int, int]


def main_face_first(boxes: list[Box], width: int, height: int) -> list[Box]:
    """``boxes`` (left, top, right, bottom), the photo's subject first: ordered by area minus
    twice the squared distance of the box's centre from the image's centre, the rule FaceNet's
    align_dataset_mtcnn and InsightFace's detectors pick the face to align by. Of two faces of
    about the same size the central one wins, whatever small change (greyscale, JPEG, scale)
    makes one of them a few pixels larger; a face far larger than the others still wins.
    Both terms are in square pixels, so the order does not change with the image's scale."""
    cx, cy = width / 2, height / 2

    def score(b: Box) -> float:
        dx, dy = (b[0] + b[2]) / 2 - cx, (b[1] + b[3]) / 2 - cy
        return (b[2] - b[0]) * (b[3] - b[1]) - 2.0 * (dx * dx + dy * dy)

    return sorted(boxes, key=score, reverse=True)
