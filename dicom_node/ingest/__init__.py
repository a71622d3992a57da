"""The receive path, in the order the bytes flow: everything between the network and the index.

* :mod:`~dicom_node.ingest.buffers`: received instances in page-aligned memory, ``O_DIRECT`` writes;
* :mod:`~dicom_node.ingest.header`: the header of an instance read from its bytes, pixel data checked;
* :mod:`~dicom_node.ingest.journal`: the ingest journal, the receiver's durability point;
* :mod:`~dicom_node.ingest.materialize`: the thread that turns journal records into files and rows;
* :mod:`~dicom_node.ingest.index`: instance identity and rows; :mod:`~dicom_node.ingest.keep`: the
  duplicates policy and the two durability modes;
* :mod:`~dicom_node.ingest.ingestor`: :class:`~dicom_node.ingest.ingestor.Ingestor`, the facade the
  receivers in :mod:`dicom_node.net` call once per C-STORE.

Nothing is imported here: :mod:`dicom_node.store` uses :mod:`~dicom_node.ingest.buffers` alone.
"""
