"""Every method by name (`--method`): learned ones first, then the baselines."""
from __future__ import annotations

from tvts.codes.baselines import BASELINES
from tvts.codes.coder import Method
from tvts.codes.conmh import ConMH
from tvts.codes.hcq import HCQ
from tvts.codes.mecoq import MeCoQ
from tvts.codes.phpq import PHPQ

METHODS: dict[str, Method] = {"conmh": ConMH(), "mecoq": MeCoQ(), "hcq": HCQ(), "phpq": PHPQ(), **BASELINES}
