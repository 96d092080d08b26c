"""configs/demo.py: the pretraining schedules end exactly at the demo's step budget.

The demo states its schedule length in epochs of its own pretraining split; a change
in the phantom or the converter that moves the split's size must move that line too
(it once ran 146 of its 150 steps when the split shrank from 679 to 671 slices).
"""

from configs import demo as demo_config
from dinolg_jax.dino import schedules
from dinolg_jax.experiments import stages


def test_the_demo_schedules_end_at_its_step_budget(tmp_path):
    config = demo_config.get_config()
    ph = stages.make_phantom(tmp_path / "phantom", config.phantom)
    conv = stages.convert_release(tmp_path / "records", ph["release"], config.convert)
    # as train.pretrain counts an epoch: the pretrain split's records // the batch
    n_records = conv["splits"]["pretrain"]["num_records"]
    steps_per_epoch = n_records // int(config.pretrain.data.batch_size)
    sched = schedules.DinoSchedules.from_config(config.pretrain, steps_per_epoch)
    assert sched.total_steps == int(config.pretrain.num_steps) == 150
