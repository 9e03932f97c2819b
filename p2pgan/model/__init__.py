"""The conditional GAN as ordered block lists, cut into client/server segments."""
