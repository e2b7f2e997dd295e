pub struct VmConfig;
