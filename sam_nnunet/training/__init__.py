"""Training: the SAM trainers' base (:mod:`.sam_trainer`) and the parts it is made of (:mod:`.settings`,
:mod:`.network_from_plans`, :mod:`.pretrained`, :mod:`.safeguards`, :mod:`.variants`), the budget mixin the benchmark
and the tests train through (:mod:`.budget`), losses, schedules, CPU numerics, and the ``distill`` command."""
