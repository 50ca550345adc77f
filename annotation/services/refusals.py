"""Why a ranking service refused a request: each error carries the HTTP status the views answer with and
a message fit to show the person who asked (annotators never see ids or internals)."""

from __future__ import annotations


class RankingRefused(Exception):
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SubmissionInvalid(RankingRefused):
    status = 400


class ClaimNotYours(RankingRefused):
    status = 403


class ClaimNotFound(RankingRefused):
    status = 404


class LeaseExpired(RankingRefused):
    status = 409


class ClaimClosed(RankingRefused):
    """The claim was already submitted or given up (skip/flag)."""

    status = 409


class CorrectionRefused(RankingRefused):
    status = 409
