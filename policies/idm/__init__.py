"""Inverse dynamics model: imagined video -> joint-target actions (config, model, processing)."""
from policies.idm.configuration_idm import IDMConfig
from policies.idm.modeling_idm import Extraction, InverseDynamicsModel
from policies.idm.processor_idm import average_windows

__all__ = ["Extraction", "IDMConfig", "InverseDynamicsModel", "average_windows"]
