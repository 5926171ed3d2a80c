"""Training, ONNX export and weight conversion for the Neural Restore ONNX backend.

This package is a developer tool: it needs torch (and h5py for the ISR converter) and is
never imported by the engine. The engine runs what it produces (``*.onnx`` + a model card
``*.json``) through ``engine.onnx.runner`` with ONNX Runtime only.

    models/rdn.py    Residual Dense Network (super-resolution ×2/×3/×4), ISR-compatible
    models/unet.py   U-Net generator (blind sharpening, residual) + PatchGAN discriminator
    degrade.py       synthetic degradations (bicubic LR, blur, noise, JPEG)
    data.py          image-folder patch sampler with a held-out validation split
    train.py         ``python -m onnx_export.train``
    export.py        ``python -m onnx_export.export`` (dynamic H/W + parity check + card)
    isr_convert.py   ``python -m onnx_export.isr_convert`` (ISR Keras .hdf5 → our RDN → ONNX)
"""
