"""Real peers for integration tests: an Orthanc PACS on loopback, real DICOM files, a C-STORE client."""
