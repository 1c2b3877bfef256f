"""Sharing a trained model: a zip that nnU-Net's installer takes, one command and one function to predict with it,
and loading someone else's model without running their code.

==================================  ===================================================================
module                              what it does
==================================  ===================================================================
:mod:`.trust`                       weights-only checkpoint loading with an allow-list; vetted plans;
                                    nnU-Net's predictor built from them
:mod:`.card`                        the model card (MODEL.md, model_card.json)
:mod:`.model_zip`                   ``export-model --zip``; installing a zip without trusting it
:mod:`.model`                       finding the model(s) to run in a zip or folder; postprocessing;
                                    ensembles; :class:`~.model.Model`
:mod:`.dicom`                       DICOM series in, DICOM-SEG out
:mod:`.predict`                     ``sam_nnunet predict`` (its manual) and the API :func:`~.predict.predict`
:mod:`.commands`                    the ``predict`` and ``install-model`` commands
==================================  ===================================================================
"""
