"""DICOM networking: the receiving SCP and its association policy, the sending SCU."""
