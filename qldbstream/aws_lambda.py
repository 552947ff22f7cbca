"""The deployed Lambda handler string ``qldbstream.aws_lambda.handler`` (see
:mod:`qldbstream.runtimes.aws_lambda`, where it lives). Kept so deployed functions keep working.
"""

from qldbstream.runtimes.aws_lambda import handler, make_handler

__all__ = ["handler", "make_handler"]
