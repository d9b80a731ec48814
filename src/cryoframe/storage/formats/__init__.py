"""File formats: cryoSPARC ``.cs``, RELION ``.star``, MRC/MRCS stacks."""
