"""Build-time tools, not needed at run time: the demo slide (``sample_data``) and annotated calibration slides of
realistic tumour burden (``sparse_slides``), both made from the shared real tiles."""
